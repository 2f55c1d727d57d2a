"""Two ServiceAccounts of different rights in a test namespace, as users of the gateway
and the CLI: `submitter` may create, read, wait on and cancel TaskRuns; `reader` may
only read and wait (get, list, watch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from taskrun_dev import controlplane as cp
from taskrun_dev.stack import Stack

from support import wait_for

RIGHTS = {
    "submitter": ["create", "get", "list", "watch", "patch"],
    "reader": ["get", "list", "watch"],
}


@dataclass(frozen=True)
class Account:
    name: str
    namespace: str
    token: str
    kubeconfig: Path  # its current context's namespace is `namespace`

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _objects(namespace: str) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for name, verbs in RIGHTS.items():
        meta = {"name": name, "namespace": namespace}
        docs += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": [
                    {
                        "apiGroups": ["celery.taskrun.dev"],
                        "resources": ["taskruns", "crontaskruns"],
                        "verbs": verbs,
                    }
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        ]
    return docs


def make_accounts(stack: Stack, namespace: str, where: Path) -> dict[str, Account]:
    """Create both accounts with their Roles; mint a token and a kubeconfig for each."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": _objects(namespace)})
    stack.kubectl("apply", "-f", "-", input=body, check=True)
    accounts = {}
    for name in RIGHTS:
        token = stack.mint_token(name, namespace, duration="1h")
        kubeconfig = where / f"{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        cp.write_token_kubeconfig(kubeconfig, stack.apiserver_url, stack.pki, user, token)
        stack.kubectl(
            "config", "set-context", "--current", f"--namespace={namespace}",
            kubeconfig=kubeconfig, check=True,
        )  # fmt: skip
        accounts[name] = Account(name, namespace, token, kubeconfig)
    # RBAC reads bindings from a cache: wait until the API server applies them, so no
    # test meets a refusal (which the gateway would also cache for a few seconds).
    for name, verbs in RIGHTS.items():
        user = f"system:serviceaccount:{namespace}:{name}"
        can_i = ("auth", "can-i", verbs[0], "taskruns.celery.taskrun.dev", "-n", namespace)
        wait_for(
            lambda can_i=can_i, user=user: (
                stack.kubectl(*can_i, f"--as={user}").stdout.strip() == "yes"
            ),
            timeout=10,
            what=f"RBAC to allow {user} to {verbs[0]} taskruns",
        )
    return accounts
