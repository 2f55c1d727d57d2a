"""The local stack's control plane, without running it: a state directory or a binary
cache made before kube-controller-manager ran here gets what it lacks, and only that."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from taskrun_dev import binaries
from taskrun_dev.binaries import Binaries, ensure_binaries
from taskrun_dev.pki import CONTROLLER_MANAGER_USER, ensure_pki
from taskrun_dev.processes import StackError

REPO_CONTROLPLANE = Path(__file__).resolve().parents[2] / "devstack" / "controlplane"


def _executables(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)


def test_an_older_state_directory_keeps_its_ca_and_gains_the_manager_certificate(
    tmp_path: Path,
) -> None:
    pki = ensure_pki(tmp_path / "pki")
    pki.controller_manager_cert.unlink()
    pki.controller_manager_key.unlink()
    before = {path: path.read_bytes() for path in pki.files()}

    ensure_pki(pki.dir)

    assert {path: path.read_bytes() for path in pki.files()} == before
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(pki.controller_manager_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        CONTROLLER_MANAGER_USER
    )
    # No group: the user alone is what the bootstrap ClusterRoleBinding names.
    assert not cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)


def test_a_new_ca_replaces_the_manager_certificate_of_the_old_one(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    pki.ca_cert.unlink()  # incomplete: everything is made again

    ensure_pki(pki.dir)

    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(
        pki.controller_manager_cert.read_bytes()
    ).verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("cached", "built"),
    [
        # A fresh machine: the three Kubernetes binaries in one go build, then etcd.
        (
            (),
            [("kube", ["kube-apiserver", "kube-controller-manager", "kubectl"]), ("etcd", [])],
        ),
        # A cache made before the stack ran kube-controller-manager: just that one.
        (("kube-apiserver", "kubectl", "etcd"), [("kube", ["kube-controller-manager"])]),
    ],
)
def test_the_build_makes_what_the_cache_lacks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cached: tuple[str, ...],
    built: list[tuple[str, list[str]]],
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    source = tmp_path / "controlplane"
    for module in ("kube", "etcd"):
        (source / module).mkdir(parents=True)
        shutil.copy(REPO_CONTROLPLANE / module / "go.mod", source / module / "go.mod")
    monkeypatch.setattr(binaries, "controlplane_source", lambda: source)
    target = binaries.cache_dir(source)
    _executables(target, *cached)
    builds: list[tuple[str, list[str]]] = []

    def go_build(args: list[str], cwd: Path, log: Path, say: object) -> None:
        """Records (module, Kubernetes commands) and makes what `go build` would."""
        out = Path(args[args.index("-o") + 1])
        commands = [a.rsplit("/", 1)[1] for a in args if a.startswith("k8s.io/kubernetes/cmd/")]
        builds.append((cwd.name, commands))
        if cwd.name == "etcd":
            _executables(out.parent, out.name)
        else:
            _executables(out, *commands)

    monkeypatch.setattr(binaries, "_go", lambda: "go")
    monkeypatch.setattr(binaries, "_run_go_build", go_build)

    found = ensure_binaries(lambda _: None)

    assert found.dir == target and not found.missing()
    assert builds == built


def test_envtest_assets_without_a_manager_serve_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _executables(tmp_path, "kube-apiserver", "kubectl", "etcd")
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    found = ensure_binaries(lambda _: None)
    assert found == Binaries(tmp_path)
    assert found.kube_controller_manager is None

    (tmp_path / "kubectl").unlink()
    with pytest.raises(StackError, match="lacks kubectl"):
        ensure_binaries(lambda _: None)
