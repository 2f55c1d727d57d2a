"""Locate or build the control-plane binaries: kube-apiserver, kube-controller-manager,
kubectl, etcd.

`KUBEBUILDER_ASSETS` wins when set (the directory envtest users already have; it may
lack kube-controller-manager, and the stack then runs without one).  Otherwise the two
Go modules under devstack/controlplane/ are built with `go build` into a per-version
cache outside the repo. The versions come from their go.mod files, so bumping a version
there also moves the cache; a cache missing a binary (made before the stack ran it)
gets just that one built.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from taskrun_dev.processes import StackError

# The binaries built from k8s.io/kubernetes, and their packages.
KUBE_COMMANDS = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
BINARIES = (*KUBE_COMMANDS, "etcd")
# envtest's assets have no controller-manager: without it the stack still runs.
OPTIONAL = ("kube-controller-manager",)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Binaries:
    dir: Path

    @property
    def kube_apiserver(self) -> Path:
        return self.dir / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path | None:
        path = self.dir / "kube-controller-manager"
        return path if os.access(path, os.X_OK) else None

    @property
    def kubectl(self) -> Path:
        return self.dir / "kubectl"

    @property
    def etcd(self) -> Path:
        return self.dir / "etcd"

    def missing(self) -> list[str]:
        return [name for name in BINARIES if not os.access(self.dir / name, os.X_OK)]


def controlplane_source() -> Path:
    """devstack/controlplane in the repo this package lives in (editable install)."""
    candidates = [Path(__file__).resolve().parents[1] / "controlplane"]
    candidates += [p / "devstack" / "controlplane" for p in [Path.cwd(), *Path.cwd().parents]]
    for candidate in candidates:
        if (candidate / "kube" / "go.mod").is_file() and (candidate / "etcd" / "go.mod").is_file():
            return candidate
    raise StackError(
        "cannot find devstack/controlplane (the Go modules that build the control plane): "
        "run from the celery-taskrun repository, or set KUBEBUILDER_ASSETS to a directory "
        "holding kube-apiserver, etcd and kubectl (and kube-controller-manager)"
    )


def _required_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", go_mod.read_text(), re.M)
    if match is None:
        raise StackError(f"{go_mod} does not require {module}")
    return match.group(1)


def versions(source: Path) -> tuple[str, str]:
    """(kubernetes version, etcd version) pinned by the Go modules."""
    kube = _required_version(source / "kube" / "go.mod", "k8s.io/kubernetes")
    etcd = _required_version(source / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3")
    return kube, etcd


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "celery-taskrun" / "controlplane"


def cache_dir(source: Path) -> Path:
    kube, etcd = versions(source)
    return cache_root() / f"k8s-{kube}-etcd-{etcd}"


def _version_ldflags(kube_version: str) -> str:
    # Plain `go build` leaves version "v0.0.0-master"; stamp the real one as Kubernetes'
    # own build does, so `kubectl version` and /version tell the truth (link-time only).
    major, minor = kube_version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={kube_version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise StackError(
            "`go` is not on PATH: install Go (1.26+) to build the control plane, or set "
            "KUBEBUILDER_ASSETS to a directory with kube-apiserver, etcd and kubectl "
            "(and kube-controller-manager)"
        )
    return go


def _run_go_build(args: list[str], cwd: Path, log: Path, say: Say) -> None:
    """Run `go build -v`, streaming package names to stderr as progress."""
    started = time.monotonic()
    with log.open("a") as log_fh:
        log_fh.write(f"$ (cd {cwd} && {' '.join(args)})\n")
        log_fh.flush()
        proc = subprocess.Popen(
            args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for count, line in enumerate(proc.stdout, start=1):
            log_fh.write(line)
            # One line in 50 is enough to show it moves without flooding the terminal.
            if count % 50 == 0:
                print(f"  [{count} packages] {line.rstrip()}", file=sys.stderr, flush=True)
        code = proc.wait()
    took = time.monotonic() - started
    if code != 0:
        raise StackError(f"go build failed (exit {code}) after {took:.0f}s; log {log}")
    say(f"built in {took:.0f}s")


def build(source: Path, target: Path, say: Say) -> None:
    """Build the binaries `target` lacks into it (atomically per binary)."""
    go = _go()
    kube_version, etcd_version = versions(source)
    target.mkdir(parents=True, exist_ok=True)
    log = target.parent / f"{target.name}.build.log"
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        out = Path(tmp)
        missing = Binaries(target).missing()
        # One `go build` for all of them: they share most of their packages.
        kube = [name for name in KUBE_COMMANDS if name in missing]
        if kube:
            say(
                f"building {', '.join(kube)} {kube_version} with go build "
                f"(minutes on 2 cores when Go's build cache is cold; log {log})"
            )
            _run_go_build(
                [
                    go,
                    "build",
                    "-v",
                    "-ldflags",
                    _version_ldflags(kube_version),
                    "-o",
                    f"{out}/",
                    *(KUBE_COMMANDS[name] for name in kube),
                ],
                source / "kube",
                log,
                say,
            )
        if "etcd" in missing:
            say(f"building etcd {etcd_version} with go build (first run: ~1 minute)")
            _run_go_build(
                [go, "build", "-v", "-o", str(out / "etcd"), "."], source / "etcd", log, say
            )
        for binary in out.iterdir():
            binary.replace(target / binary.name)


def ensure_binaries(say: Say) -> Binaries:
    """The binaries to run: from KUBEBUILDER_ASSETS, the cache, or a fresh build."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        found = Binaries(Path(assets).expanduser().resolve())
        lacking = [name for name in found.missing() if name not in OPTIONAL]
        if lacking:
            raise StackError(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(lacking)}")
        return found
    source = controlplane_source()
    target = cache_dir(source)
    cached = Binaries(target)
    if not cached.missing():
        return cached
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two `up`s at once (e.g. parallel test sessions) must not build twice.
    with (target.parent / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.missing():
            build(source, target, say)
    return cached
