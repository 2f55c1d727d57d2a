"""The project installed in the local cluster as its manifests install it: the CRD, the
operator's and the gateway's ServiceAccounts and RBAC, and kubeconfigs with their tokens,
so both run with exactly the rights a deployment grants them."""

from __future__ import annotations

from pathlib import Path

import yaml

from taskrun_dev import controlplane as cp
from taskrun_dev.binaries import Say
from taskrun_dev.processes import StackError
from taskrun_dev.state import StateDir

GATEWAY_SERVICE_ACCOUNT = "celery-taskrun-gateway"
# What the local stack takes from deploy/gateway.yaml: the gateway's identity and rights
# (the gateway itself runs as a process, not as the Deployment).
_GATEWAY_RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")

TOKEN_DURATION = "24h"


class Accounts:
    """Applies deploy/'s CRD and RBAC; mints the operator's and the gateway's kubeconfigs."""

    def __init__(
        self,
        state_dir: StateDir,
        control_plane: cp.ControlPlane,
        kubectl: cp.Kubectl,
        deploy_dir: Path | None,
        say: Say,
    ) -> None:
        self._dir = state_dir
        self._control_plane = control_plane
        self._kubectl = kubectl
        self._deploy_dir = deploy_dir
        self._say = say

    def install(self) -> None:
        """Apply the CRDs and RBAC, wait for the CRDs, mint the operator's kubeconfig."""
        for file, name in cp.CRD_FILES.items():
            crd = self._deploy_dir / file if self._deploy_dir else None
            if crd is None or not crd.is_file():
                self._say(f"warning: {crd or f'deploy/{file}'} not found, {name} not installed")
                continue
            self._kubectl.run(
                "apply", "--server-side", "--force-conflicts", "-f", str(crd), check=True
            )
            self._kubectl.run(
                "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", check=True
            )
        rbac = self._deploy_dir / "rbac.yaml" if self._deploy_dir else None
        if rbac is None or not rbac.is_file():
            raise StackError(f"{rbac or 'deploy/rbac.yaml'} not found: cannot grant the operator")
        self._kubectl.run("apply", "-f", str(rbac), check=True)
        self.write_operator_kubeconfig()

    def mint_token(
        self,
        service_account: str = cp.OPERATOR_SERVICE_ACCOUNT,
        namespace: str = cp.OPERATOR_NAMESPACE,
        duration: str = TOKEN_DURATION,
    ) -> str:
        """A TokenRequest token for a ServiceAccount (what a pod would be given)."""
        result = self._kubectl.run(
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            f"--duration={duration}",
            check=True,
        )
        return result.stdout.strip()

    def write_operator_kubeconfig(self, path: Path | None = None) -> Path:
        path = path or self._dir.operator_kubeconfig
        self._write_kubeconfig(path, cp.OPERATOR_SERVICE_ACCOUNT)
        return path

    def install_gateway(self) -> Path:
        """Apply the gateway's ServiceAccount and RBAC (deploy/gateway.yaml); mint its
        kubeconfig. Returns the kubeconfig's path."""
        manifest = self._deploy_dir / "gateway.yaml" if self._deploy_dir else None
        if manifest is None or not manifest.is_file():
            raise StackError(f"{manifest or 'deploy/gateway.yaml'} not found")
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        rbac = [d for d in docs if d.get("kind") in _GATEWAY_RBAC_KINDS]
        self._kubectl.run("apply", "-f", "-", input=yaml.safe_dump_all(rbac), check=True)
        path = self._dir.gateway_kubeconfig
        self._write_kubeconfig(path, GATEWAY_SERVICE_ACCOUNT)
        return path

    def _write_kubeconfig(self, path: Path, service_account: str) -> None:
        """A kubeconfig with a fresh token of `service_account` (in the operator's namespace)."""
        user = f"system:serviceaccount:{cp.OPERATOR_NAMESPACE}:{service_account}"
        server = self._control_plane.apiserver_url
        token = self.mint_token(service_account)
        cp.write_token_kubeconfig(path, server, self._dir.pki, user, token)
