"""Certificates and keys for the local API server, made with `cryptography`.

One self-signed CA signs the API server's serving certificate and the client
certificates of the admin (O=system:masters) and of kube-controller-manager
(CN=system:kube-controller-manager, the user the bootstrap RBAC binds); a separate key
signs service-account tokens. They are made once per state directory and reused, so
tokens and kubeconfigs stay valid across restarts. ECDSA P-256 keys: fast to
generate, accepted by every part involved.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
ADMIN_USER = "taskrun-dev-admin"
# The bootstrap ClusterRoleBinding system:kube-controller-manager names this user.
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
# The apiserver's first service IP (10.0.0.1 for 10.0.0.0/24) is in the serving cert
# because the `kubernetes` Service points at it.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVING_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
SERVING_IPS = ("127.0.0.1", "10.0.0.1")


@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def controller_manager_cert(self) -> Path:
        return self.dir / "controller-manager.crt"

    @property
    def controller_manager_key(self) -> Path:
        return self.dir / "controller-manager.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def files(self) -> list[Path]:
        return [
            self.ca_cert,
            self.ca_key,
            self.serving_cert,
            self.serving_key,
            self.admin_cert,
            self.admin_key,
            self.sa_key,
            self.sa_pub,
        ]

    def complete(self) -> bool:
        return all(path.is_file() for path in self.files())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    path.chmod(0o600 if private else 0o644)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _client_name(user: str, group: str | None = None) -> x509.Name:
    # The API server reads a client certificate's CN as the user, each O as a group.
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group)] if group else []
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, user)])


def ensure_pki(directory: Path) -> Pki:
    """Create the CA, serving cert, client certs and SA key unless they exist already."""
    pki = Pki(directory)
    if not pki.complete():
        _create(pki)
        # A new CA: a client certificate of the old one would be refused.
        pki.controller_manager_cert.unlink(missing_ok=True)
    if not (pki.controller_manager_cert.is_file() and pki.controller_manager_key.is_file()):
        # Issued by the existing CA: a state directory made before the controller-manager
        # ran here keeps its CA, SA key and the tokens they signed.
        _issue_client(
            pki,
            pki.controller_manager_cert,
            pki.controller_manager_key,
            _client_name(CONTROLLER_MANAGER_USER),
        )
    return pki


def _issue_client(pki: Pki, cert_path: Path, key_path: Path, subject: x509.Name) -> None:
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _new_key()
    cert = _issue(
        subject, key, ca_cert.subject, ca_key, ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _create(pki: Pki) -> None:
    pki.dir.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM

    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "taskrun-dev-ca")])
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)

    serving_key = _new_key()
    serving_cert = _issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        serving_key,
        ca_name,
        ca_key,
        ca=False,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
        sans=[x509.DNSName(n) for n in SERVING_NAMES]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS],
    )

    admin_key = _new_key()
    admin_cert = _issue(
        _client_name(ADMIN_USER, "system:masters"),
        admin_key,
        ca_name,
        ca_key,
        ca=False,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )

    sa_key = _new_key()
    sa_pub = sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)

    _write(pki.ca_key, _key_pem(ca_key), private=True)
    _write(pki.serving_key, _key_pem(serving_key), private=True)
    _write(pki.admin_key, _key_pem(admin_key), private=True)
    _write(pki.sa_key, _key_pem(sa_key), private=True)
    _write(pki.sa_pub, sa_pub)
    _write(pki.serving_cert, serving_cert.public_bytes(pem))
    _write(pki.admin_cert, admin_cert.public_bytes(pem))
    # The CA cert last: complete() keys off all files, and a crash midway regenerates all.
    _write(pki.ca_cert, ca_cert.public_bytes(pem))
