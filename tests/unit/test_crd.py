"""The CRDs in deploy/ are generated from the models and must not drift."""

import re
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from celery_taskrun.api import crd, cron
from celery_taskrun.api.cron import CronTaskRunSpec
from celery_taskrun.core.cron import ScheduleError, parse

ROOT = Path(__file__).resolve().parents[2]


def schema_of(definition: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("name", sorted(crd.GENERATED))
def test_committed_crds_match_the_models(name: str) -> None:
    committed = (ROOT / "deploy" / name).read_text()
    assert committed == crd.GENERATED[name](), f"deploy/{name} drifted: run {crd.COMMAND}"


def undescribed(node: Any, path: str = "") -> list[str]:
    """Paths of properties without a description (`kubectl explain` says `<no description>`)."""
    missing = []
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{path}.{name}")
        for key, value in node.items():
            missing += undescribed(value, f"{path}.{key}" if key != "properties" else path)
    elif isinstance(node, list):
        for value in node:
            missing += undescribed(value, path)
    return missing


@pytest.mark.parametrize("definition", [crd.crd(), crd.cron_crd()], ids=["TaskRun", "CronTaskRun"])
def test_every_field_is_described(definition: dict[str, Any]) -> None:
    schema = schema_of(definition)
    assert schema["description"]
    # metadata is ObjectMeta, which the API server describes (and refuses to have described).
    assert undescribed(schema) == [".metadata"], "add Field(description=...) or a docstring"


def test_an_undescribed_field_is_found() -> None:
    schema = {"properties": {"a": {"description": "x", "properties": {"b": {"type": "string"}}}}}
    assert undescribed(schema) == [".a.b"]


def walk(node: Any, path: str = "") -> list[str]:
    """Paths of nodes that break structural-schema rules."""
    bad = []
    if isinstance(node, dict):
        for banned in ("$ref", "anyOf", "$defs", "title", "default"):
            if banned in node:
                bad.append(f"{path}.{banned}")
        if "properties" in node and node.get("type") != "object":
            bad.append(f"{path}: properties without type object")
        for key, value in node.items():
            bad += walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            bad += walk(value, f"{path}[{i}]")
    return bad


def test_schema_is_structural() -> None:
    schema = schema_of(crd.crd())
    # The one default: a status the operator has not written reads as unobserved.
    status = schema["properties"]["status"]
    assert (status["default"], status["properties"]["observedGeneration"]["default"]) == ({}, 0)
    assert walk(schema) == [
        ".properties.status.default",
        ".properties.status.properties.observedGeneration.default",
    ]
    spec = schema["properties"]["spec"]
    assert spec["properties"]["timeLimit"] == {
        "description": "Hard time limit of one execution.",
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 31536000,
    }
    assert spec["properties"]["kwargs"]["x-kubernetes-preserve-unknown-fields"] is True


def test_contract_names() -> None:
    doc = next(yaml.safe_load_all(crd.render()))
    names = doc["spec"]["names"]
    assert (doc["spec"]["group"], names["plural"], names["kind"], names["shortNames"]) == (
        "celery.taskrun.dev",
        "taskruns",
        "TaskRun",
        ["tr"],
    )
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Task", "Phase", "Reason", "Progress", "Age", "Duration"} <= columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for field in (
        "phase",
        "state",
        "reason",
        "message",
        "taskId",
        "attempt",
        "worker",
        "submittedAt",
        "startedAt",
        "completedAt",
        "progress",
        "result",
        "resultTruncated",
        "error",
        "limits",
        "conditions",
        "observedGeneration",
    ):
        assert field in status, field


# -- CronTaskRun -------------------------------------------------------------------------


def test_cron_contract_names() -> None:
    doc = yaml.safe_load(crd.render_cron())
    names = doc["spec"]["names"]
    assert (doc["spec"]["group"], names["plural"], names["kind"], names["shortNames"]) == (
        "celery.taskrun.dev",
        "crontaskruns",
        "CronTaskRun",
        ["ctr"],
    )
    assert doc["spec"]["scope"] == "Namespaced"
    version = doc["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Schedule": ("string", ".spec.schedule"),
        "TimeZone": ("string", ".spec.timeZone"),
        "Suspend": ("boolean", ".spec.suspend"),
        "Active": ("string", ".status.active[*].name"),
        "Last": ("date", ".status.lastScheduleTime"),
        "Next": ("date", ".status.nextScheduleTime"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    assert set(schema["spec"]["properties"]) == {
        "schedule",
        "timeZone",
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "missedRuns",
        "suspend",
        "successfulRunsHistoryLimit",
        "failedRunsHistoryLimit",
        "taskRunTemplate",
    }
    assert schema["spec"]["required"] == ["schedule", "taskRunTemplate"]
    assert set(schema["status"]["properties"]) == {
        "lastScheduleTime",
        "lastSuccessfulTime",
        "nextScheduleTime",
        "active",
        "conditions",
        "observedGeneration",
    }
    active = schema["status"]["properties"]["active"]["items"]
    assert set(active["properties"]) == {"name", "uid"}
    template = schema["spec"]["properties"]["taskRunTemplate"]
    assert set(template["properties"]) == {"metadata", "spec"}
    assert set(template["properties"]["metadata"]["properties"]) == {"labels", "annotations"}
    assert (cron.CRON_LABEL, cron.SCHEDULED_AT_ANNOTATION) == (
        "celery.taskrun.dev/cron",
        "celery.taskrun.dev/scheduled-at",
    )


def test_cron_schema_is_structural_with_the_contracts_defaults() -> None:
    schema = schema_of(crd.cron_crd())
    status = schema["properties"]["status"]
    assert (status["default"], status["properties"]["observedGeneration"]["default"]) == ({}, 0)
    spec = schema["properties"]["spec"]["properties"]
    defaults = {name: prop["default"] for name, prop in spec.items() if "default" in prop}
    assert defaults == {
        "timeZone": "UTC",
        "concurrencyPolicy": "Allow",
        "missedRuns": "Latest",
        "suspend": False,
        "successfulRunsHistoryLimit": 3,
        "failedRunsHistoryLimit": 1,
    }
    # The model reads an object the API server defaulted, and one it did not, alike.
    bare = CronTaskRunSpec.model_validate(
        {"schedule": "@hourly", "taskRunTemplate": {"spec": {"task": "t"}}}
    )
    assert bare.model_dump(mode="json", include=set(defaults)) == defaults
    assert walk(schema) == [
        *(f".properties.spec.properties.{name}.default" for name in defaults),
        ".properties.status.default",
        ".properties.status.properties.observedGeneration.default",
    ]
    for name in ("enum", "type"):
        assert (
            spec["concurrencyPolicy"][name]
            == {
                "enum": ["Allow", "Forbid", "Replace"],
                "type": "string",
            }[name]
        )


def test_the_template_spec_is_checked_as_a_taskruns_but_may_change() -> None:
    template = schema_of(crd.cron_crd())["properties"]["spec"]["properties"]["taskRunTemplate"]
    spec = template["properties"]["spec"]
    own = schema_of(crd.crd())["properties"]["spec"]
    assert spec["properties"] == own["properties"]
    assert spec["required"] == own["required"] == ["task"]
    rules = [rule["rule"] for rule in spec["x-kubernetes-validations"]]
    assert rules == [rule for rule, _ in crd.SPEC_RULES]
    assert not any("oldSelf" in rule for rule in rules)
    assert any("oldSelf" in rule["rule"] for rule in own["x-kubernetes-validations"])


def test_the_template_args_are_bounded_by_the_admission_policy() -> None:
    policies = {
        doc["metadata"]["name"]: doc["spec"]
        for doc in crd.admission_policy()
        if doc["kind"] == "ValidatingAdmissionPolicy"
    }
    cron_policy = policies["crontaskruns.celery.taskrun.dev-bounded-input"]
    (rule,) = cron_policy["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["crontaskruns"], ["CREATE", "UPDATE"])
    own = policies["taskruns.celery.taskrun.dev-bounded-input"]["validations"]
    template = "object.spec.taskRunTemplate.spec"
    assert [v["expression"] for v in cron_policy["validations"]] == [
        v["expression"].replace("object.spec", template) for v in own
    ]
    assert [v["message"] for v in cron_policy["validations"]] == [
        v["message"].replace("spec.", "spec.taskRunTemplate.spec.") for v in own
    ]


# Schedules the parser (core/cron.py) accepts: admission must let each through.
PARSED = [
    "* * * * *",
    "*/5 * * * *",
    "0 9 * * MON-FRI",
    "30 2 1,15 * *",
    "0 0 1 jan,jul *",
    "5-50/15 0-23/2 1-31 1-12 0-7",
    "0 12 * * 7",
    "  0\t12 *  *   * ",
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
    "@DAILY",
    "@every 1",
    "@every 90",
    "@every 30s",
    "@every 5m",
    "@every 1h",
    "@every 1h30m",
    "@every 2m30s",
    "@every 1h0m1s",
    "@EVERY 10S",
]
# Schedules no parse accepts, which admission refuses by their shape.
MISSHAPEN = [
    "",
    "* * * *",
    "* * * * * *",
    "0 0 * * * 2026",
    "CRON_TZ=Europe/Berlin 0 9 * * *",
    "TZ=UTC 0 * * * *",
    "@every",
    "@every ",
    "@every 1.5s",
    "@every 1d",
    "@every 30s1m",
    "@every -5s",
    "@reboot",
    "@hourly 5",
    "@daily @hourly",
    "0 9 * * MON;rm",
    "0 9 ? * *",
    "*/ * * * *",
    "0 9 * * 1,",
]
ZERO = ["@every 0", "@every 0s", "@every 00", "@every 0h0m0s", "@every 0m"]


@pytest.mark.parametrize("schedule", PARSED)
def test_admission_admits_what_parses(schedule: str) -> None:
    parse(schedule)
    assert re.match(cron.SCHEDULE_SHAPE, schedule), schedule
    assert not re.match(cron.ZERO_PERIOD, schedule)


@pytest.mark.parametrize("schedule", MISSHAPEN)
def test_admission_refuses_a_misshapen_schedule(schedule: str) -> None:
    with pytest.raises(ScheduleError):
        parse(schedule)
    assert not re.match(cron.SCHEDULE_SHAPE, schedule), schedule


@pytest.mark.parametrize("schedule", ZERO)
def test_admission_refuses_a_zero_period(schedule: str) -> None:
    with pytest.raises(ScheduleError, match="at least 1s"):
        parse(schedule)
    assert re.match(cron.SCHEDULE_SHAPE, schedule) and re.match(cron.ZERO_PERIOD, schedule)


_VALUE = st.one_of(
    st.integers(0, 70).map(str), st.sampled_from(["jan", "JUL", "mon", "Sun", "xyz"])
)
_ITEM = st.tuples(
    st.one_of(st.just("*"), _VALUE),
    st.one_of(st.just(""), _VALUE.map("-{}".format)),
    st.one_of(st.just(""), st.integers(0, 70).map("/{}".format)),
).map("".join)
_FIELD = st.lists(_ITEM, min_size=1, max_size=3).map(",".join)
_SPACE = st.sampled_from([" ", "  ", "\t", " \t "])
_FIELDS = st.tuples(st.lists(_FIELD, min_size=4, max_size=6), _SPACE).map(
    lambda fields_space: fields_space[1].join(fields_space[0])
)
_MACROS = st.sampled_from(["@hourly", "@Daily", "@WEEKLY", "@midnight", "@reboot", "@yearly"])
_UNIT = st.sampled_from(["", "h", "m", "s", "S", "H", "d", ".5s"])
_EVERY = st.lists(st.tuples(st.integers(0, 99).map(str), _UNIT).map("".join), max_size=3).map(
    lambda parts: "@every " + "".join(parts)
)


@given(st.tuples(_SPACE, st.one_of(_FIELDS, _MACROS, _EVERY), _SPACE).map("".join))
def test_a_schedule_that_parses_passes_admission(schedule: str) -> None:
    try:
        parse(schedule)
    except ScheduleError:
        return  # refused, by its shape at admission or by the operator's parse
    assert re.match(cron.SCHEDULE_SHAPE, schedule), schedule
    assert not re.match(cron.ZERO_PERIOD, schedule), schedule


def test_every_zone_the_database_has_passes_admission() -> None:
    zones = zoneinfo.available_timezones() | {"UTC"}
    assert len(zones) > 300
    refused = [
        zone
        for zone in zones
        if not re.match(cron.TIME_ZONE_PATTERN, zone) or len(zone) > cron.MAX_TIME_ZONE_CHARS
    ]
    assert refused == []


@pytest.mark.parametrize(
    "zone",
    ["", "/etc/passwd", "../UTC", "Europe/", "Europe//Berlin", "UTC+1 ", "+05:00", "a/b/c/d/e"],
)
def test_a_zone_no_database_has_the_form_of_is_refused(zone: str) -> None:
    assert not re.match(cron.TIME_ZONE_PATTERN, zone)
