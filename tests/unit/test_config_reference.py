"""docs/configuration.md is generated from OperatorConfig and must not drift."""

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from celery_taskrun.api import config_reference
from celery_taskrun.api.config import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]


def test_committed_reference_matches_the_config_model() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == config_reference.render(), f"docs drifted: run {config_reference.COMMAND}"


def test_every_setting_is_described() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in config_reference.all_models(OperatorConfig)
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert missing == [], "add Field(description=...) to these settings"


class Mode(StrEnum):
    FAST = "fast"
    SAFE = "safe"


class Rule(BaseModel):
    """Who may run what.

    Only the first paragraph shows."""

    tasks: list[str] = Field(["*"], description="Task globs.")


class Sample(BaseModel):
    policies: list[Rule] = Field([], description="Rules | any match.")
    byName: dict[str, Rule] = Field({}, description="Named rules.")
    mode: Mode = Field(Mode.SAFE, description="How.")
    kind: Literal["a", "b"] = Field("a", description="Which.")
    ratio: float | None = Field(None, gt=0, le=1, description="Share.")
    name: str = Field(description="Required.")


def test_new_fields_and_nested_models_show_up_by_themselves() -> None:
    text = config_reference.render(Sample)
    rows = [
        "| `policies` | list of [Rule](#rule) | `[]` | Rules \\| any match. |",
        "| `byName` | map of string to [Rule](#rule) | `{}` | Named rules. |",
        "| `mode` | `fast` or `safe` | `safe` | How. |",
        "| `kind` | `a` or `b` | `a` | Which. |",
        "| `ratio` | number, > 0, <= 1 | unset | Share. |",
        "| `name` | string | required | Required. |",
        '| `tasks` | list of string | `["*"]` | Task globs. |',
    ]
    for row in rows:
        assert row in text.splitlines(), row
    assert "## Rule\n\nWho may run what.\n\nUsed by: `policies`, `byName`.\n" in text
    assert text.count("## Rule") == 1
