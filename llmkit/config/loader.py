"""YAML + dotted `key=value` overrides -> a typed config, and back to YAML.

The loader knows nothing about any command: a recipe hands it its own config
class, whose sections bring their own fields, help and checks.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llmkit.config.schema import build, to_dict
from llmkit.errors import ConfigError, ConfigIssue, UserError

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file; a missing file or a syntax error is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Config file not found: {path}. Check the path, or write a starter config with `llmkit init`.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of sections (model:, data:, train:, ...), got "
                        f"{type(data).__name__}.")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`true`, `3`, `[a, b]`, `null`)."""
    issues = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            issues.append(ConfigIssue(item, "an override must look like key.path=value, e.g. "
                                            "train.learning_rate=3e-5."))
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                issues.append(ConfigIssue(where, f"is {child!r}, not a section; cannot set {key}."))
                break
            node = child
        else:
            node[parts[-1]] = value
    if issues:
        raise ConfigError(issues, "overrides")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = (), data: dict | None = None) -> T:
    """Build `cls` from a YAML file (or `data`) plus overrides; raise `ConfigError` listing every problem."""
    raw = dict(data or {})
    if path is not None:
        raw = read_yaml(path)
    raw = apply_overrides(raw, list(overrides))
    obj, issues = build(cls, raw)
    if issues:
        raise ConfigError(issues, str(path) if path else None)
    return obj


def dump_config(cfg: Any, command: str | None = None) -> str:
    """The resolved config as YAML text, with a header saying how to re-run it."""
    header = [f"# Resolved by llmkit on {datetime.datetime.now().isoformat(timespec='seconds')}."]
    if command:
        header.append(f"# Re-run as is: llmkit {command} config.yaml")
    body = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body


def save_config(cfg: Any, path: str | Path, command: str | None = None) -> None:
    Path(path).write_text(dump_config(cfg, command))
