"""The operator's configuration reference, generated from `OperatorConfig`.

    python -m celery_taskrun.api.config_reference > docs/configuration.md

Every field of the model and of the models it holds (found through its type hints, so a
new field or a new nested model shows up by itself): its type with its bounds, its
default, the environment variable that overrides it, and its description.  A test
fails while docs/configuration.md differs from this output.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from celery_taskrun.api.config import ENVIRONMENT, OperatorConfig

COMMAND = "python -m celery_taskrun.api.config_reference > docs/configuration.md"
SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}
BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models a type hint holds, at any depth (list[M], dict[str, M], ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from models_in(arg)


def all_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every model under it, each once, in the order they first appear."""
    found = [root]
    for model in found:  # grows while walked: breadth first
        for field in model.model_fields.values():
            found += [m for m in models_in(field.annotation) if m not in found]
    return found


def type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " or ".join(f"`{m.value}`" for m in annotation)
    return SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def bounds(field: FieldInfo) -> str:
    return ", ".join(
        f"{sign} {getattr(m, name)}"
        for m in field.metadata
        for name, sign in BOUNDS
        if getattr(m, name, None) is not None
    )


def default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, Enum):
        value = value.value
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseModel], environment: dict[str, str]) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = type_name(field.annotation)
        if bounds(field):
            kind += f", {bounds(field)}"
        meaning = field.description or ""
        if name in environment:
            meaning += f" Environment: `{environment[name]}`."
        lines.append(f"| `{name}` | {cell(kind)} | {cell(default(field))} | {cell(meaning)} |")
    return lines


def render(root: type[BaseModel] = OperatorConfig) -> str:
    lines = [
        "# Operator configuration reference",
        "",
        f"Generated from `{root.__name__}` (`operator/celery_taskrun/api/config.py`) by",
        f"`{COMMAND}`; a test fails while this file differs.",
        "",
        "The operator reads its configuration from a YAML file (`--config FILE` or",
        f"`TASKRUN_CONFIG`), the `{root.__name__}` table at its top level; the environment",
        "variables named below override its keys. Unknown keys are refused, so a typo",
        "stops the operator at start. Seconds are numbers.",
    ]
    for model in all_models(root):
        lines += ["", f"## {model.__name__}", ""]
        if model.__doc__:
            lines += [model.__doc__.strip().split("\n\n")[0].replace("\n", " "), ""]
        users = [
            f"`{name}`"
            for parent in all_models(root)
            for name, field in parent.model_fields.items()
            if model in models_in(field.annotation)
        ]
        if users:
            lines += [f"Used by: {', '.join(users)}.", ""]
        lines += table(model, ENVIRONMENT if model is root else {})
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
