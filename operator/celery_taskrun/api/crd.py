"""Generate the TaskRun and CronTaskRun CustomResourceDefinitions from the pydantic models.

`python -m celery_taskrun.api.crd deploy` writes `deploy/crd.yaml` (TaskRun, and the
admission policies of both kinds) and `deploy/crontaskrun-crd.yaml`; a test fails when
the committed files drift from the models.  Pydantic's JSON Schema is turned into a
Kubernetes structural schema (no $ref, no anyOf-null, OpenAPI v3.0 exclusive
bounds, preserve-unknown-fields for free-form JSON), and the cross-field rules
that a schema cannot say are added as CEL (`x-kubernetes-validations`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from celery_taskrun.api import cron
from celery_taskrun.api.model import (
    FINISHED_LABEL,
    GROUP,
    KIND,
    MAX_ARGS_BYTES,
    MAX_ARGS_DEPTH,
    MAX_ARGS_VALUES,
    PLURAL,
    VERSION,
    Phase,
    TaskRunSpec,
    TaskRunStatus,
)

JSONSchema = dict[str, Any]

# Cross-field rules on a TaskRun spec, wherever one is written (a TaskRun, a
# CronTaskRun's template): (rule, message).  Each is one readable refusal.
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
]
# Transition rules (on update) of a TaskRun's own spec: a template may be edited.
TRANSITION_RULES: list[tuple[str, str]] = [
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

CRON_PRINTER_COLUMNS: list[JSONSchema] = [
    {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
    {"name": "TimeZone", "type": "string", "jsonPath": ".spec.timeZone"},
    {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
    # A column shows one value (the API server prints a JSONPath's first result): the
    # first active run's name; `-o yaml` lists them all.
    {"name": "Active", "type": "string", "jsonPath": ".status.active[*].name"},
    {"name": "Last", "type": "date", "jsonPath": ".status.lastScheduleTime"},
    {"name": "Next", "type": "date", "jsonPath": ".status.nextScheduleTime"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# What `kubectl explain` says of the fields every object has.  The API server refuses
# a description of metadata: explain shows ObjectMeta's own.
ROOT_PROPERTIES: JSONSchema = {
    "apiVersion": {
        "type": "string",
        "description": "The versioned schema of this representation of an object.",
    },
    "kind": {"type": "string", "description": "The REST resource this object represents."},
    "metadata": {"type": "object"},
}

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
    values = out.get("additionalProperties")
    if "properties" in out:
        out["type"] = "object"
        out["properties"] = {k: structural(v, defs) for k, v in out["properties"].items()}
    elif isinstance(values, dict) and "type" in values:
        out["additionalProperties"] = structural(values, defs)  # a map: labels, annotations
    elif out.get("type") == "object" or "additionalProperties" in out:
        # Free-form JSON (kwargs, progress info): kept as the user or the task wrote it.
        out.pop("additionalProperties", None)
        out["type"] = "object"
        out["x-kubernetes-preserve-unknown-fields"] = True
        # One field to server-side apply: else each key at every depth is one entry of
        # managedFields, stored with the object, and the API server's field tracking
        # of a map of n keys costs it n**2 (30,000 keys: 0.9 s per write).
        out["x-kubernetes-map-type"] = "atomic"
    if out.get("type") == "array":
        out["items"] = structural(out.get("items", {}), defs)
    if "type" not in out and "enum" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True  # any JSON value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def model_schema(model: type[BaseModel]) -> JSONSchema:
    raw = model.model_json_schema()
    return structural(raw, raw.get("$defs", {}))


def taskrun_spec_schema() -> JSONSchema:
    """A TaskRun spec's schema and cross-field rules, wherever one is written."""
    schema = model_schema(TaskRunSpec)
    schema["properties"]["kwargs"]["maxProperties"] = 256
    schema["x-kubernetes-validations"] = [
        {"rule": rule, "message": message} for rule, message in SPEC_RULES
    ]
    return schema


def spec_schema() -> JSONSchema:
    """A TaskRun's own spec: a TaskRun spec, frozen once created but for `cancel`."""
    schema = taskrun_spec_schema()
    rules = schema["x-kubernetes-validations"]
    rules += [{"rule": rule, "message": message} for rule, message in TRANSITION_RULES]
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
    return schema


def cron_spec_schema() -> JSONSchema:
    """A CronTaskRun's spec: its template's spec checked as a TaskRun's, the schedule's
    shape and the zone's form checked at admission, the contract's defaults filled in."""
    schema = model_schema(cron.CronTaskRunSpec)
    declared = cron.CronTaskRunSpec.model_json_schema()["properties"]
    for name, prop in schema["properties"].items():
        if declared[name].get("default") is not None:
            prop["default"] = declared[name]["default"]
    template = schema["properties"]["taskRunTemplate"]["properties"]
    template["spec"] = {**taskrun_spec_schema(), "description": template["spec"]["description"]}
    schema["properties"]["schedule"]["x-kubernetes-validations"] = [
        {
            "rule": f"self.matches(r'{cron.SCHEDULE_SHAPE}')",
            "message": "spec.schedule must be 5 cron fields (minute hour day-of-month month "
            "day-of-week), a macro (@yearly, @monthly, @weekly, @daily, @hourly) or @every "
            "DURATION (seconds, or e.g. 30s, 5m, 1h); the time zone goes in spec.timeZone",
        },
        {
            "rule": f"!self.matches(r'{cron.ZERO_PERIOD}')",
            "message": "spec.schedule: @every needs a period of at least 1s",
        },
    ]
    zones = ", ".join(f"'{zone}'" for zone in sorted(cron.TIME_ZONES))
    schema["properties"]["timeZone"]["x-kubernetes-validations"] = [
        {
            "rule": f"self in [{zones}]",
            "message": "spec.timeZone is not a zone of the IANA time zone database"
            f" ({cron.TIME_ZONE_DATABASE}): use a name such as Europe/Berlin or UTC",
        }
    ]
    return schema


def status_schema(model: type[TaskRunStatus] | type[cron.CronTaskRunStatus]) -> JSONSchema:
    schema = model_schema(model)
    # Until the operator writes, a new object reads `status: {observedGeneration: 0}`,
    # so kstatus (Flux) sees generation 1 unobserved (InProgress), not Current.
    schema["default"] = {}
    schema["properties"]["observedGeneration"]["default"] = 0
    return schema


def definition(
    *,
    kind: str,
    plural: str,
    short_name: str,
    description: str,
    spec: JSONSchema,
    status: JSONSchema,
    columns: list[JSONSchema],
) -> JSONSchema:
    """The CustomResourceDefinition of one namespaced kind of the group, with a status
    subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": ["celery"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {**ROOT_PROPERTIES, "spec": spec, "status": status},
                        }
                    },
                }
            ],
        },
    }


def crd() -> JSONSchema:
    return definition(
        kind=KIND,
        plural=PLURAL,
        short_name="tr",
        description="A Celery task run, declared as a resource.",
        spec=spec_schema(),
        status=status_schema(TaskRunStatus),
        columns=PRINTER_COLUMNS,
    )


def cron_crd() -> JSONSchema:
    return definition(
        kind=cron.KIND,
        plural=cron.PLURAL,
        short_name=cron.SHORT_NAME,
        description="A schedule of TaskRuns: one TaskRun, from its template, per slot.",
        spec=cron_spec_schema(),
        status=status_schema(cron.CronTaskRunStatus),
        columns=CRON_PRINTER_COLUMNS,
    )


def _policy(
    name: str,
    plural: str,
    operations: list[str],
    validations: list[JSONSchema],
    variables: list[JSONSchema] | None = None,
) -> list[JSONSchema]:
    """A ValidatingAdmissionPolicy on one kind of the group and the binding that enforces
    it."""
    named: JSONSchema = {"variables": variables} if variables else {}
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
                            "resources": [plural],
                        }
                    ]
                },
                **named,
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


CONTAINER = "(type(x) == list || type(x) == map)"


def level_variables(spec: str, values: int, depth: int) -> list[JSONSchema]:
    """CEL variables that take the args and kwargs of the TaskRun spec at `spec` (a CEL
    path from `object`) apart a level at a time: `level{k}` the values k levels below
    them, `values{k}` how many values levels 1..k hold.

    Each level is built only while the count stays within `values`, and counted before
    it is built (the sizes of the containers above it), so no comprehension runs over
    more than `values` items whatever the object holds.  A walk that descends into
    each value instead (one comprehension inside another) cannot stop at a count, and
    the API server's cost tracking makes each step of a comprehension scan a stack
    that grows with the steps taken: n values cost it n**2."""
    roots = f"[has({spec}.args) ? {spec}.args : [], has({spec}.kwargs) ? {spec}.kwargs : {{}}]"
    found = [{"name": "level0", "expression": roots}, {"name": "values0", "expression": "0"}]
    for k in range(depth):
        found += [
            {
                "name": f"values{k + 1}",
                "expression": f"variables.values{k}"
                f" + variables.level{k}.map(x, {CONTAINER} ? size(x) : 0).sum()",
            },
            {
                "name": f"level{k + 1}",
                # Not built past the bound, nor when it is empty (scalars and empty
                # containers only above it): a wide level is walked once, not twice.
                "expression": f"variables.values{k + 1} > {values}"
                f" || variables.values{k + 1} == variables.values{k} ? [] : variables.level{k}"
                ".map(x, type(x) == map ? x.map(y, x[y]) : type(x) == list ? x : []).flatten(1)",
            },
        ]
    return found


def bounded_input(spec: str) -> tuple[list[JSONSchema], list[JSONSchema]]:
    """(validations, their variables): the free-form args and kwargs of the TaskRun spec
    at `spec` (a CEL path from `object`) hold few values, nest shallowly, and are small."""
    shown = spec.removeprefix("object.")
    counted = f"variables.values{MAX_ARGS_DEPTH}"
    few = f"{counted} <= {MAX_ARGS_VALUES}"
    # Containers may sit on levels 0 (args, kwargs) to 31: level 32 holds scalars only.
    shallow = f"!variables.level{MAX_ARGS_DEPTH}.exists(x, {CONTAINER})"
    bounded = [
        {
            "expression": few,
            "message": f"{shown}.args and {shown}.kwargs together hold more than"
            f" {MAX_ARGS_VALUES} values: pass a reference to the data instead",
            "reason": "Invalid",
        },
        {
            "expression": f"!({few}) || {shallow}",
            "message": f"{shown}.args or {shown}.kwargs nests deeper than {MAX_ARGS_DEPTH} levels",
            "reason": "Invalid",
        },
        {
            # `format` renders them in one call, but its cost grows with depth times size:
            # it runs only on what the rules above admit.
            "expression": f"!({few} && {shallow}) || size(bytes('%s'.format([variables.level0])))"
            f" <= {MAX_ARGS_BYTES}",
            "message": f"{shown}.args and {shown}.kwargs together exceed {MAX_ARGS_BYTES} bytes:"
            " pass a reference to the data instead",
            "reason": "Invalid",
        },
    ]
    return bounded, level_variables(spec, MAX_ARGS_VALUES, MAX_ARGS_DEPTH)


def admission_policy() -> list[JSONSchema]:
    """ValidatingAdmissionPolicies for what the CRD's CEL cannot see (free-form args and
    kwargs): bounded values, nesting and size on create, immutability on update; a
    CronTaskRun's template is bounded alike, on create and on update (it may be
    edited)."""
    frozen = [
        {
            "expression": f"has(object.spec.{field}) == has(oldObject.spec.{field})"
            f" && (!has(object.spec.{field}) || object.spec.{field} == oldObject.spec.{field})",
            "message": f"spec.{field} is immutable; only spec.cancel may change",
            "reason": "Invalid",
        }
        for field in FREE_FORM_SPEC_FIELDS
    ]
    # The operator's watch leaves out runs labelled finished: on a run still going, the
    # label would hide its cancel and its deletion from the operator.
    terminal = ", ".join(f"'{phase.value}'" for phase in Phase if phase.terminal)
    finished = {
        "expression": f"!has(object.metadata.labels) || !('{FINISHED_LABEL}' in"
        f" object.metadata.labels) || (has(object.status) && has(object.status.phase)"
        f" && object.status.phase in [{terminal}])",
        "message": f"the label {FINISHED_LABEL} is the operator's, on finished runs only",
        "reason": "Invalid",
    }
    return [
        *_policy(
            f"{PLURAL}.{GROUP}-bounded-input",
            PLURAL,
            ["CREATE"],
            *bounded_input("object.spec"),
        ),
        *_policy(f"{PLURAL}.{GROUP}-immutable-input", PLURAL, ["UPDATE"], frozen),
        *_policy(f"{PLURAL}.{GROUP}-finished-label", PLURAL, ["CREATE", "UPDATE"], [finished]),
        *_policy(
            f"{cron.PLURAL}.{GROUP}-bounded-input",
            cron.PLURAL,
            ["CREATE", "UPDATE"],
            *bounded_input("object.spec.taskRunTemplate.spec"),
        ),
    ]


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # a manifest reads better without YAML anchors


COMMAND = "python -m celery_taskrun.api.crd deploy"


def _render(source: str, documents: list[JSONSchema]) -> str:
    header = f"# Generated from operator/celery_taskrun/api/{source} by `{COMMAND}`.\n"
    return header + yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=100)


def render() -> str:
    return _render("model.py", [crd(), *admission_policy()])


def render_cron() -> str:
    return _render("cron.py", [cron_crd()])


# The files generated into deploy/, and what each holds.
GENERATED: dict[str, Callable[[], str]] = {
    "crd.yaml": render,
    "crontaskrun-crd.yaml": render_cron,
}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(f"usage: {COMMAND.removesuffix(' deploy')} DIRECTORY\n")
        return 2
    for name, make in GENERATED.items():
        (Path(argv[0]) / name).write_text(make())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
