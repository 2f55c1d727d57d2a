"""Generate the TaskRun CustomResourceDefinition from the pydantic models.

`python -m celery_taskrun.api.crd > deploy/crd.yaml` writes it; a test fails when the
committed file drifts from the models.  Pydantic's JSON Schema is turned into a
Kubernetes structural schema (no $ref, no anyOf-null, OpenAPI v3.0 exclusive
bounds, preserve-unknown-fields for free-form JSON), and the cross-field rules
that a schema cannot say are added as CEL (`x-kubernetes-validations`).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from celery_taskrun.api.model import (
    GROUP,
    KIND,
    MAX_ARGS_CHARS,
    MAX_ARGS_DEPTH,
    PLURAL,
    VERSION,
    TaskRunSpec,
    TaskRunStatus,
)

JSONSchema = dict[str, Any]

# Cross-field rules on spec: (rule, message).  Each is one readable refusal.
SPEC_RULES: list[tuple[str, str]] = [
    (
        "!has(self.softTimeLimit) || !has(self.timeLimit) || self.softTimeLimit < self.timeLimit",
        "spec.softTimeLimit must be below spec.timeLimit: Celery's prefork pool does not "
        "enforce the hard limit when the soft one is larger",
    ),
    (
        "!has(self.sizeBasedLimits) || !has(self.sizeBasedLimits.minSeconds)"
        " || !has(self.sizeBasedLimits.maxSeconds)"
        " || self.sizeBasedLimits.minSeconds <= self.sizeBasedLimits.maxSeconds",
        "spec.sizeBasedLimits.minSeconds must not exceed maxSeconds",
    ),
    (
        "!has(self.poll) || !has(self.poll.initialInterval) || !has(self.poll.maxInterval)"
        " || self.poll.initialInterval <= self.poll.maxInterval",
        "spec.poll.initialInterval must not exceed spec.poll.maxInterval",
    ),
    (
        "!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)",
        "spec.cancel cannot be undone once set to true",
    ),
]
MUTABLE_SPEC_FIELDS = frozenset({"cancel"})
# Free-form JSON is invisible to a CRD's CEL (no schema type), so the immutability of
# these is checked by a ValidatingAdmissionPolicy, whose CEL sees the whole object.
FREE_FORM_SPEC_FIELDS = ("args", "kwargs")

PRINTER_COLUMNS: list[JSONSchema] = [
    {"name": "Task", "type": "string", "jsonPath": ".spec.task"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason"},
    {"name": "Progress", "type": "number", "jsonPath": ".status.progress.percent"},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {"name": "Worker", "type": "string", "jsonPath": ".status.worker", "priority": 1},
    {"name": "Task ID", "type": "string", "jsonPath": ".status.taskId", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
]

_DROPPED_KEYS = ("title", "default", "$defs")


def structural(schema: JSONSchema, defs: dict[str, JSONSchema]) -> JSONSchema:
    """Rewrite one pydantic JSON Schema node into a structural OpenAPI v3.0 node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    variants = schema.get("anyOf")
    if variants is not None:
        # Optional[X] is `anyOf: [X, null]`: an absent field, never a null one.
        concrete = [v for v in variants if v.get("type") != "null"]
        if len(concrete) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            return structural({**concrete[0], **rest}, defs)
        raise ValueError(f"no structural form for a union: {schema}")

    out: JSONSchema = {k: v for k, v in schema.items() if k not in _DROPPED_KEYS}
    if "description" in out:
        # A model's docstring: its first paragraph is what `kubectl explain` should say.
        out["description"] = " ".join(out["description"].split("\n\n")[0].split())
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in out:
            out[plain] = out.pop(bound)
            out[bound] = True
    if "properties" in out:
        out["type"] = "object"
        out["properties"] = {k: structural(v, defs) for k, v in out["properties"].items()}
    elif out.get("type") == "object" or "additionalProperties" in out:
        # Free-form JSON (kwargs, progress info): kept as the user or the task wrote it.
        out.pop("additionalProperties", None)
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "array":
        out["items"] = structural(out.get("items", {}), defs)
    if "type" not in out and "enum" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True  # any JSON value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def model_schema(model: type[TaskRunSpec] | type[TaskRunStatus]) -> JSONSchema:
    raw = model.model_json_schema()
    return structural(raw, raw.get("$defs", {}))


def spec_schema() -> JSONSchema:
    schema = model_schema(TaskRunSpec)
    schema["properties"]["kwargs"]["maxProperties"] = 256
    rules = [{"rule": rule, "message": message} for rule, message in SPEC_RULES]
    for field in schema["properties"]:
        if field in MUTABLE_SPEC_FIELDS or field in FREE_FORM_SPEC_FIELDS:
            continue
        # Transition rules run on update only: the spec is frozen once created.
        rules.append(
            {
                "rule": f"has(self.{field}) == has(oldSelf.{field})"
                f" && (!has(self.{field}) || self.{field} == oldSelf.{field})",
                "message": f"spec.{field} is immutable; only spec.cancel may change",
            }
        )
    schema["x-kubernetes-validations"] = rules
    return schema


def status_schema() -> JSONSchema:
    schema = model_schema(TaskRunStatus)
    # Until the operator writes, a new TaskRun reads `status: {observedGeneration: 0}`,
    # so kstatus (Flux) sees generation 1 unobserved (InProgress), not Current.
    schema["default"] = {}
    schema["properties"]["observedGeneration"]["default"] = 0
    return schema


def crd() -> JSONSchema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["tr"],
                "categories": ["celery"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A Celery task run, declared as a resource.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def children(var: str, level: int) -> str:
    """CEL: the values of a map or the items of a list, as one list (else empty)."""
    return (
        f"(type({var}) == map ? {var}.map(k{level}, {var}[k{level}])"
        f" : type({var}) == list ? {var} : [])"
    )


def nesting_rule(root: str, depth: int) -> str:
    """CEL: `root` nests at most `depth` containers deep (CEL has no recursion, so the
    walk is unrolled, each level naming its own variable: linear in `depth`)."""
    rule = f"type(v{depth}) != map && type(v{depth}) != list"
    for level in reversed(range(depth)):
        rule = f"{children(f'v{level}', level)}.all(v{level + 1}, {rule})"
    return f"[{root}].all(v0, {rule})"


def size_rule(root: str, depth: int) -> str:
    """CEL: about the JSON size of `root`, in characters: strings and keys by their
    length, other values as one each (admission cannot serialize; the operator then
    checks the exact size)."""
    own = "(type({v}) == string ? size({v}) : 1)"
    keys = "(type({v}) == map ? {v}.map(j{level}, size(j{level})).sum() : 0)"
    total = own.format(v=f"v{depth}")
    for level in reversed(range(depth)):
        var = f"v{level}"
        total = (
            f"{own.format(v=var)} + {keys.format(v=var, level=level)}"
            f" + {children(var, level)}.map(v{level + 1}, {total}).sum()"
        )
    return f"[{root}].map(v0, {total}).sum()"


def _policy(name: str, operations: list[str], validations: list[JSONSchema]) -> list[JSONSchema]:
    """A ValidatingAdmissionPolicy on TaskRuns and the binding that enforces it."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": operations,
                            "resources": [PLURAL],
                        }
                    ]
                },
                "validations": validations,
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        },
    ]


def admission_policy() -> list[JSONSchema]:
    """ValidatingAdmissionPolicies for what the CRD's CEL cannot see (free-form args and
    kwargs): bounded nesting and size on create, immutability on update."""
    bounded = [
        {
            "expression": f"!has(object.spec.{field}) || "
            + nesting_rule(f"object.spec.{field}", MAX_ARGS_DEPTH),
            "message": f"spec.{field} nests deeper than {MAX_ARGS_DEPTH} levels",
            "reason": "Invalid",
        }
        for field in FREE_FORM_SPEC_FIELDS
    ]
    bounded.append(
        {
            "expression": " + ".join(
                f"(has(object.spec.{field}) ? {size_rule(f'object.spec.{field}', MAX_ARGS_DEPTH)}"
                " : 0)"
                for field in FREE_FORM_SPEC_FIELDS
            )
            + f" <= {MAX_ARGS_CHARS}",
            "message": f"spec.args and spec.kwargs together exceed {MAX_ARGS_CHARS} characters:"
            " pass a reference to the data instead",
            "reason": "Invalid",
        }
    )
    frozen = [
        {
            "expression": f"has(object.spec.{field}) == has(oldObject.spec.{field})"
            f" && (!has(object.spec.{field}) || object.spec.{field} == oldObject.spec.{field})",
            "message": f"spec.{field} is immutable; only spec.cancel may change",
            "reason": "Invalid",
        }
        for field in FREE_FORM_SPEC_FIELDS
    ]
    return [
        *_policy(f"{PLURAL}.{GROUP}-bounded-input", ["CREATE"], bounded),
        *_policy(f"{PLURAL}.{GROUP}-immutable-input", ["UPDATE"], frozen),
    ]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a manifest reads better without YAML anchors


def render() -> str:
    header = (
        "# Generated from operator/celery_taskrun/api/model.py"
        " by `python -m celery_taskrun.api.crd`.\n"
    )
    documents = [crd(), *admission_policy()]
    return header + yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
