"""The Grafana dashboard and the alerts of deploy/observability, against the operator.

- Every PromQL expression (dashboard panels and variables, alerting rules) parses with
  Prometheus's own parser and reads only metrics operator/celery_taskrun/engine/metrics.py
  defines (`promql-names`, built beside promtool from the Go module proxy).
- `promtool check rules` accepts the PrometheusRule's spec as a rules file, `promtool
  test rules` runs alerts_test.yaml against it, and `promtool check metrics` lints what
  the operator exports.
- The PrometheusRule and the chart's copies apply to the real API server under
  prometheus-operator's CRDs (from its Go module), and say the same as deploy/.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_helpers import (
    OBSERVABILITY,
    Render,
    defined_metrics,
    load_all,
    one,
    run,
    selected,
    serve_crds,
    server_side_apply,
)
from prometheus_client import REGISTRY, generate_latest

from taskrun_dev.stack import Stack

DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RULE = OBSERVABILITY / "prometheusrule.yaml"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
# Grafana's interval variables; any duration makes the expression valid PromQL.
GRAFANA_INTERVAL = re.compile(r"\$__(rate_interval|interval|range)\b")
LABEL_VALUES = re.compile(r"^label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)$")


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> tuple[list[str], list[str]]:
    """(the panels' PromQL, with Grafana's intervals filled in; the metrics its
    variables' label_values() read)."""
    exprs = [
        GRAFANA_INTERVAL.sub("5m", node["expr"]) for node in walk(dashboard()) if "expr" in node
    ]
    variable_metrics = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["definition"])
            assert match, f"variable {variable['name']}: not label_values(metric, label)"
            variable_metrics.append(match.group(1))
    return exprs, variable_metrics


def rules_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(RULE.read_text())["spec"]
    return spec


def rule_exprs() -> list[str]:
    return [rule["expr"] for group in rules_spec()["groups"] for rule in group["rules"]]


def test_every_query_reads_only_metrics_the_operator_exports(
    promtool: tuple[Path, Path],
) -> None:
    _, promql_names = promtool
    panel_exprs, variable_metrics = dashboard_queries()
    exprs = panel_exprs + rule_exprs()
    assert len(panel_exprs) >= 15 and len(rule_exprs()) >= 4
    defined = defined_metrics()
    used: set[str] = set(variable_metrics)
    for expr, names in zip(exprs, selected(promql_names, exprs), strict=True):
        assert names, f"{expr!r} reads no metric"
        assert set(names) <= defined, f"{expr!r} reads {sorted(set(names) - defined)}"
        used |= set(names)
    assert set(variable_metrics) <= defined
    # What the dashboard is for: each of these shows somewhere.
    wanted = {
        "taskrun_transitions_total",  # runs by phase and reason
        "taskrun_status_latency_seconds_bucket",  # status lag
        "taskrun_queue_wait_seconds_bucket",
        "taskrun_run_duration_seconds_bucket",
        "taskrun_in_flight",
        "taskrun_queue_runs",
        "taskrun_backend_errors_total",
        "taskrun_api_writes_total",
    }
    assert wanted <= used, sorted(wanted - used)


def test_the_name_check_has_teeth(promtool: tuple[Path, Path]) -> None:
    """An unknown metric is seen through functions and aggregations; a typo fails."""
    _, promql_names = promtool
    [names] = selected(promql_names, ['sum by (le) (rate(celery_tasks_total{q="a"}[5m]))'])
    assert names == ["celery_tasks_total"]
    assert "celery_tasks_total" not in defined_metrics()
    bad = run(promql_names, input='["rate(x[5m]"]')
    assert bad.returncode == 1 and "unclosed left parenthesis" in bad.stderr


def test_dashboard_panels_use_the_datasource_variable() -> None:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_the_failures_that_stop_runs() -> None:
    alerts = {rule["alert"]: rule for group in rules_spec()["groups"] for rule in group["rules"]}
    for name, metric in [
        ("TaskRunPastDeadline", "taskrun_runs_past_deadline"),
        ("TaskRunBackendUnavailable", "taskrun_backend_up"),
        ("TaskRunNoLeader", "taskrun_leader"),
        ("TaskRunStatusWritesFailing", "taskrun_api_write_errors_total"),
    ]:
        assert metric in alerts[name]["expr"], name
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])


def test_promtool_checks_and_unit_tests_the_rules(
    promtool: tuple[Path, Path], tmp_path: Path
) -> None:
    tool, _ = promtool
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_spec()))
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    checked = run(tool, "check", "rules", "--lint=all", "--lint-fatal", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in checked.stdout
    tested = run(tool, "test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_refuses_a_broken_rule(promtool: tuple[Path, Path], tmp_path: Path) -> None:
    tool, _ = promtool
    spec = rules_spec()
    spec["groups"][0]["rules"][0]["expr"] = "max by (job) (taskrun_runs_past_deadline > 0"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    checked = run(tool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode != 0
    assert "unclosed left parenthesis" in checked.stdout + checked.stderr


def test_promtool_lints_the_operators_metrics(promtool: tuple[Path, Path]) -> None:
    tool, _ = promtool
    exposition = generate_latest(REGISTRY).decode()
    assert "# TYPE taskrun_leader gauge" in exposition
    linted = run(tool, "check", "metrics", input=exposition)
    assert linted.returncode == 0, linted.stdout + linted.stderr


# -- against the API server, and the chart's copies ------------------------------------


@pytest.fixture(scope="session")
def prometheus_operator_crds(stack: Stack, foreign_crds: Path) -> None:
    serve_crds(stack, sorted(foreign_crds.glob("monitoring.coreos.com_*.yaml")))


@pytest.mark.e2e
@pytest.mark.usefixtures("prometheus_operator_crds")
def test_observability_applies_under_prometheus_operators_crd(stack: Stack) -> None:
    built = stack.kubectl("kustomize", str(OBSERVABILITY), check=True)
    docs = load_all(built.stdout)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "PrometheusRule"]
    assert json.loads(one(docs, "ConfigMap")["data"]["celery-taskrun.json"]) == dashboard()
    server_side_apply(stack, docs)
    # The schema is enforced: a rule without `expr` is refused.
    broken = one(docs, "PrometheusRule")
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    refused = stack.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                            input=yaml.safe_dump(broken))  # fmt: skip
    assert refused.returncode != 0 and "expr" in refused.stderr, refused.stderr


@pytest.mark.e2e
@pytest.mark.usefixtures("prometheus_operator_crds")
def test_chart_ships_the_same_rules_and_dashboard(stack: Stack, render: Render) -> None:
    values = {
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
            "grafanaDashboard": {"enabled": True},
        }
    }
    docs = render(values, namespace="celery-taskrun-system")
    rule = one(docs, "PrometheusRule")
    assert rule["spec"] == rules_spec()
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    board = one(docs, "ConfigMap", "-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["celery-taskrun.json"]) == dashboard()
    monitoring = [d for d in docs if d["kind"] in {"PrometheusRule", "ServiceMonitor"}]
    server_side_apply(stack, [*monitoring, board])
    assert not [d for d in render() if d["kind"] == "PrometheusRule"]
