"""Loading the operator's configuration: a YAML file, then the environment.

The file comes from `--config` or `TASKRUN_CONFIG`; connection URLs from the same
variables a Celery worker reads (`CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from celery_taskrun.api.config import ENVIRONMENT, OperatorConfig


def load(path: str | None = None, environ: dict[str, str] | None = None) -> OperatorConfig:
    env = dict(os.environ if environ is None else environ)
    path = path or env.get("TASKRUN_CONFIG")
    data: dict[str, Any] = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
    for key, var in ENVIRONMENT.items():
        if env.get(var):
            data[key] = env[var]
    return OperatorConfig.model_validate(data)
