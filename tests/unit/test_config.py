"""Operator configuration: environment, file, refusals."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from celery_taskrun.api import config
from celery_taskrun.engine import config_file


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("brokerUrl: redis://file/0\ndefaults: {timeLimit: 30}\n")
    loaded = config_file.load(
        str(path), {"CELERY_BROKER_URL": "redis://env/0", "TASKRUN_METRICS_PORT": "9"}
    )
    assert loaded.brokerUrl == "redis://env/0"
    assert loaded.defaults.timeLimit == 30
    assert loaded.metricsPort == 9


def test_rpc_backend_is_refused_with_a_reason() -> None:
    with pytest.raises(ValidationError, match="results back to the process that sent"):
        config_file.load(None, {"CELERY_RESULT_BACKEND": "rpc://"})


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("defautls: {}\n")
    with pytest.raises(ValidationError):
        config_file.load(str(path), {})


def test_first_matching_task_pattern_wins() -> None:
    loaded = config.OperatorConfig.model_validate(
        {"tasks": {"a.b": {"timeLimit": 1}, "a.*": {"timeLimit": 2}}}
    )
    assert (d := loaded.task_defaults("a.b")) is not None and d.timeLimit == 1
    assert (d := loaded.task_defaults("a.c")) is not None and d.timeLimit == 2
    assert loaded.task_defaults("b") is None
