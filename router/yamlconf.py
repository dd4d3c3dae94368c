"""Read a YAML file into a frozen pydantic model, turning every problem into a ConfigError.

Shared by the site config and the per-model configs so that both report errors the same way:
`file: key.path: reason`, never a traceback.
"""

from __future__ import annotations

import re
import types
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from router.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for config sections: immutable, and an unknown key is an error that names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        """`server:` with every key under it commented out is YAML null: that section's
        defaults, as if it were absent (a section that may be None keeps its None). A list or
        a map with every item commented out (`upstreams:`, `routing.models:`) is an empty one."""
        if not isinstance(data, dict) or None not in data.values():
            return data
        fields = cls.model_fields
        return {
            key: _when_empty(fields.get(key)) if value is None else value
            for key, value in data.items()
        }

    @model_validator(mode="before")
    @classmethod
    def _booleans_are_no_numbers(cls, data: Any) -> Any:
        """pydantic reads true as 1 for a number: `port: yes` (YAML's true) would listen on
        port 1, `drain_timeout_s: on` drain for a second. Such a value is refused at its key
        instead, as a string would be."""
        if not isinstance(data, dict) or not any(isinstance(v, bool) for v in data.values()):
            return data
        fields = cls.model_fields
        return {
            key: str(value).lower()
            if isinstance(value, bool) and key in fields and _numeric(fields[key].annotation)
            else value
            for key, value in data.items()
        }


def _numeric(annotation: Any) -> bool:
    """An int or float field, optional or not (a bool is a valid value for neither)."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if annotation in (int, float):
        return True
    if get_origin(annotation) not in (Union, types.UnionType):
        return False
    members = [m for m in get_args(annotation) if m is not type(None)]
    return bool(members) and all(_numeric(m) for m in members)


def _when_empty(field: Any) -> Any:
    """What a key left empty stands for: a section's defaults, an empty list or map (never a
    default list: a residency rule's `endpoints:` left empty must not widen to "any"); else
    None, as written."""
    annotation = getattr(field, "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {}
    container = get_origin(annotation)
    return container() if container in (dict, tuple, list) else None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently: a second `server:` would drop the
    first one's settings unseen, so a repeated key is an error at its line instead."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges, and keys written beside it override on purpose
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base constructor reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def describe(error: ValidationError) -> list[str]:
    items = error.errors()
    problems = []
    for item in items:
        if item["type"] == "too_short" and _has_inner_error(item["loc"], items):
            continue  # pydantic counts only the valid entries: the inner error is the news
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        reason = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] == "value_error":  # our validators' own words, not "Value error, ..."
            reason = str(item.get("ctx", {}).get("error", reason))
        problems.append(f"{where}: {reason}")
    return problems


def _has_inner_error(loc: tuple[int | str, ...], items: list[Any]) -> bool:
    return any(len(i["loc"]) > len(loc) and i["loc"][: len(loc)] == loc for i in items)


def validate(data: Any, model: type[M], source: str) -> M:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source, [f"expected a mapping at the top level, got {type(data).__name__}"]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, describe(exc)) from None


# `${NAME}` or `${NAME:-default}`, as shells, envsubst and Compose write a variable.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-=?+][^}]*)?\}")


def unexpanded_variables(data: Any, where: str = "") -> list[str]:
    """Strings that hold a `${NAME}` no one expanded: the config is read as written, so a
    host, URL, path or header would carry it literally (a folder named `${STATE}`, an upstream
    never reached, a token refused) instead of failing. Only the variable's name is quoted."""
    if isinstance(data, str):
        found = _VARIABLE.search(data)
        if found is None:
            return []
        return [
            f"{where or '(top level)'}: holds ${{{found.group(1)}}}, which is not expanded "
            "(the config is read as written: expand it before, with envsubst say)"
        ]
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return []
    problems = []
    for key, value in items:
        problems += unexpanded_variables(value, f"{where}.{key}" if where else str(key))
    return problems


def load(path: Path, model: type[M], *, refuse_variables: bool = False) -> M:
    """`refuse_variables`: a `${NAME}` in a value is an error (see unexpanded_variables)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["file is not valid UTF-8"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(str(path), [f"{where}{problem}"]) from None
    if refuse_variables:
        problems = unexpanded_variables(data)
        if problems:
            raise ConfigError(str(path), problems)
    return validate(data, model, str(path))
