"""The operator's way to the API server: a small client over aiohttp (Kopf's own
transport) for the few calls it makes, in place of the generated Kubernetes client
(its models cost 55 MiB at import, and building each request and serializing its body
was a third of the operator's CPU).

`connect` finds the credentials as kubectl would (a kubeconfig with client
certificates or a token; inside a pod, the ServiceAccount's token, read again as the
kubelet rotates it).  Bodies are plain dicts, sent as JSON; answers are bytes, decoded
only by the callers that read them.  Every call has a timeout; a refusal is a typed
`KubeError` (errors.py), and so is an API server never heard from.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import tempfile
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from celery_taskrun.clients.errors import ApiUnavailable, KubeError, refused, unreachable
from celery_taskrun.clients.lines import LineBuffer, LineTooLong

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Where a pod finds its namespace (the in-cluster fallback of `connect`).
POD_NAMESPACE_FILE = SERVICE_ACCOUNT / "namespace"
# The kubelet rotates a projected token well before it expires; client-go reads the
# file again each minute.
TOKEN_REREAD_SECONDS = 60.0
DEFAULT_TIMEOUT = 10.0
# The largest answer read: a page of OPERATOR_PAGE TaskRuns is under 20 MiB of JSON
# (paging.py); anything longer is not an answer of ours.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
# As many connections as the generated client's pool had.
CONNECTIONS = 100


class Content(StrEnum):
    """How the API server reads a body (a create or replace, or one of its patches)."""

    JSON = "application/json"
    MERGE_PATCH = "application/merge-patch+json"
    STRATEGIC_PATCH = "application/strategic-merge-patch+json"
    JSON_PATCH = "application/json-patch+json"


class Method(StrEnum):
    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"


def path_of(*parts: str) -> str:
    """A URL path of `parts`, each quoted whole (a name never reaches another path)."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


class Bearer:
    """A token, fixed or read from a file (again every TOKEN_REREAD_SECONDS)."""

    def __init__(self, token: str | None = None, path: Path | None = None) -> None:
        self.token = token
        self.path = path
        self.read_at = -float("inf")

    def current(self) -> str | None:
        now = time.monotonic()
        if self.path is not None and now - self.read_at >= TOKEN_REREAD_SECONDS:
            # Unreadable mid-rotation: the previous token is still good for a while.
            with contextlib.suppress(OSError):
                self.token = self.path.read_text().strip() or self.token
            self.read_at = now
        return self.token


@dataclass
class Endpoint:
    """Where the API server is, how to trust it, who we are, our default namespace."""

    server: str
    tls: ssl.SSLContext | None
    bearer: Bearer | None
    namespace: str


class ApiServer:
    """Requests to one API server, over one pool of connections."""

    def __init__(self, endpoint: Endpoint, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.user_agent = "celery-taskrun"
        self._session: aiohttp.ClientSession | None = None

    @property
    def namespace(self) -> str:
        return self.endpoint.namespace

    def session(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop it was made in.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=self.endpoint.tls or False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": self.user_agent}
        token = self.endpoint.bearer.current() if self.endpoint.bearer else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def call(
        self,
        method: Method,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Any = None,
        content: Content = Content.JSON,
        seconds: float | None = None,
        accept: str = "application/json",
    ) -> bytes:
        """The answer's bytes (undecoded); a KubeError when refused or not heard from
        within `seconds` (default: the client's timeout)."""
        headers = self._headers(accept)
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = content.value
        try:
            async with asyncio.timeout(seconds or self.timeout):
                # The server's own path, if any (a proxy's), goes before ours.
                async with self.session().request(
                    method.value,
                    self.endpoint.server + path,
                    params=query,
                    data=data,
                    headers=headers,
                ) as response:
                    answer = await _bounded(response)
                    status, reason = response.status, response.reason or ""
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise unreachable(exc) from exc
        if not 200 <= status <= 299:
            raise refused(status, reason, answer)
        return answer

    async def events(
        self, path: str, *, query: Mapping[str, str | int], seconds: float, accept: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A watch: GET `path` and each line of the answer decoded, as it comes, until
        the server ends it; a KubeError when refused, when a line is not a JSON object
        or too long, or when the stream lasts past `seconds` (each read is bounded by
        what is left of them)."""
        headers = self._headers(accept)
        ends = time.monotonic() + seconds
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.session().get(
                    self.endpoint.server + path, params=query, headers=headers
                )
            try:
                if response.status != 200:
                    async with asyncio.timeout(self.timeout):
                        body = await response.content.read(64 * 1024)
                    raise refused(response.status, response.reason or "", body)
                lines = LineBuffer()
                while True:
                    async with asyncio.timeout(max(ends - time.monotonic(), 0.0)):
                        chunk = await response.content.readany()
                    if not chunk:
                        return
                    for line in lines.feed(chunk):
                        yield decoded(line)
            finally:
                response.release()
        except LineTooLong as exc:
            raise ApiUnavailable(0, "WatchFailed", str(exc)) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise unreachable(exc) from exc

    async def read(
        self,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        seconds: float | None = None,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        """GET `path`, decoded: a JSON object (anything else: ApiUnavailable)."""
        answer = await self.call(Method.GET, path, query=query, seconds=seconds, accept=accept)
        return decoded(answer)


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise ApiUnavailable(response.status, "TooLong", "the API server's answer is too long")
    chunks, total = [], 0
    async for chunk in response.content.iter_any():
        total += len(chunk)
        if total > MAX_ANSWER_BYTES:
            raise ApiUnavailable(response.status, "TooLong", "the API server's answer is too long")
        chunks.append(chunk)
    return b"".join(chunks)


def decoded(answer: bytes) -> dict[str, Any]:
    try:
        found = json.loads(answer)
    except (ValueError, RecursionError) as exc:
        raise ApiUnavailable(0, "NotJson", "the API server's answer is not JSON") from exc
    if not isinstance(found, dict):
        raise ApiUnavailable(0, "NotJson", "the API server's answer is not a JSON object")
    return found


# -- credentials -----------------------------------------------------------------------


def kubeconfig_paths(explicit: str | None, environ: Mapping[str, str]) -> list[Path]:
    """The kubeconfig files kubectl would read: --kubeconfig, $KUBECONFIG, ~/.kube/config."""
    if explicit:
        return [Path(explicit).expanduser()]
    listed = environ.get("KUBECONFIG", "")
    if listed:
        return [Path(p).expanduser() for p in listed.split(os.pathsep) if p]
    return [Path("~/.kube/config").expanduser()]


def pod_namespace(file: Path = POD_NAMESPACE_FILE) -> str:
    try:
        return file.read_text().strip() or "default"
    except OSError:
        return "default"


def connect(
    kubeconfig: str | None = None, context: str | None = None, seconds: float = DEFAULT_TIMEOUT
) -> ApiServer:
    """A client with the caller's credentials (its `namespace`: their current context's).

    Like kubectl: --kubeconfig, else $KUBECONFIG, else ~/.kube/config; inside a pod
    without any, the pod's ServiceAccount. Raises KubeError when none works.
    """
    wanted = kubeconfig_paths(kubeconfig, os.environ)
    paths = [p for p in wanted if p.is_file()]
    try:
        endpoint = from_kubeconfig(paths, context) if paths else in_cluster(os.environ)
    except (OSError, ValueError, KeyError, TypeError, ssl.SSLError, yaml.YAMLError) as exc:
        where = " ".join(map(str, paths or wanted))
        raise KubeError(0, "NoConfig", f"no usable kubeconfig ({where}): {exc}") from exc
    return ApiServer(endpoint, seconds)


def in_cluster(environ: Mapping[str, str], account: Path = SERVICE_ACCOUNT) -> Endpoint:
    """The pod's ServiceAccount (`account`: where the kubelet mounts it)."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ValueError("not in a pod (no KUBERNETES_SERVICE_HOST) and no kubeconfig")
    host = f"[{host}]" if ":" in host else host
    tls = ssl.create_default_context(cafile=str(account / "ca.crt"))
    bearer = Bearer(path=account / "token")
    if not bearer.current():
        raise ValueError(f"no ServiceAccount token in {account}")
    return Endpoint(f"https://{host}:{port}", tls, bearer, pod_namespace(account / "namespace"))


def _named(files: list[tuple[Path, dict[str, Any]]], section: str, name: str) -> dict[str, Any]:
    """The entry `name` of `section` (the first file naming it wins, as in kubectl);
    relative paths in it are the file's."""
    for path, config in files:
        for entry in config.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                found = dict(entry.get(section[:-1]) or {})
                for key, value in found.items():
                    if key in FILE_KEYS and isinstance(value, str):
                        found[key] = str(path.parent / Path(value).expanduser())
                return found
    raise ValueError(f"{section[:-1]} {name!r} not in the kubeconfig")


FILE_KEYS = ("certificate-authority", "client-certificate", "client-key", "tokenFile")


def from_kubeconfig(paths: list[Path], context: str | None) -> Endpoint:
    files = [(p, yaml.safe_load(p.read_text()) or {}) for p in paths]
    chosen = context or next(
        (c["current-context"] for _, c in files if c.get("current-context")), None
    )
    if not chosen:
        raise ValueError("no current context")
    try:
        named = _named(files, "contexts", chosen)
    except ValueError:
        raise KubeError(0, "NoContext", f"context {chosen!r} not in the kubeconfig") from None
    cluster = _named(files, "clusters", str(named.get("cluster")))
    user = _named(files, "users", str(named.get("user")))
    if "exec" in user or "auth-provider" in user:
        raise ValueError("credential plugins (exec, auth-provider) are not supported")
    server = str(cluster["server"]).rstrip("/")
    tls = None
    if server.startswith("https://"):
        tls = _tls(cluster, user)
    bearer = None
    if user.get("token") or user.get("tokenFile"):
        file = user.get("tokenFile")
        bearer = Bearer(user.get("token"), Path(file) if file else None)
    return Endpoint(server, tls, bearer, str(named.get("namespace") or "default"))


def _tls(cluster: Mapping[str, Any], user: Mapping[str, Any]) -> ssl.SSLContext:
    if cluster.get("insecure-skip-tls-verify"):
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        tls = ssl.create_default_context(cadata=ca)
    else:
        tls = ssl.create_default_context(cafile=cluster.get("certificate-authority"))
    cert, key = _pem(user, "client-certificate"), _pem(user, "client-key")
    if cert and key:
        # The ssl module loads a key pair from files only: a private directory, gone after.
        with tempfile.TemporaryDirectory() as where:
            files = []
            for name, pem in (("cert", cert), ("key", key)):
                file = Path(where) / name
                file.touch(mode=0o600)
                file.write_bytes(pem)
                files.append(str(file))
            tls.load_cert_chain(files[0], files[1])
    return tls


def _pem(user: Mapping[str, Any], key: str) -> bytes | None:
    if user.get(f"{key}-data"):
        return base64.b64decode(user[f"{key}-data"])
    if user.get(key):
        return Path(user[key]).read_bytes()
    return None
