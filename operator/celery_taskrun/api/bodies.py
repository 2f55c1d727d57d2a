"""The raw JSON bodies the clients pass around, as far as this project reads them.

Types only, never checked: what the API server sends is trusted to its schema, and
code that must not trust a field (a Lease another process wrote) still checks it.
"""

from __future__ import annotations

from typing import Any, TypedDict


class ObjectMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    creationTimestamp: str
    deletionTimestamp: str
    finalizers: list[str]
    annotations: dict[str, str]
    labels: dict[str, str]


# `continue` is a keyword: the functional form.
ListMeta = TypedDict("ListMeta", {"resourceVersion": str, "continue": str}, total=False)


class TaskRunBody(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]
    status: dict[str, Any]


class TaskRunList(TypedDict, total=False):
    metadata: ListMeta
    items: list[TaskRunBody]


class LeaseSpec(TypedDict, total=False):
    holderIdentity: str
    leaseDurationSeconds: int
    acquireTime: str
    renewTime: str
    leaseTransitions: int


class LeaseBody(TypedDict, total=False):
    metadata: ObjectMeta
    spec: LeaseSpec
