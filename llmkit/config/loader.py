"""YAML + dotted `key=value` overrides -> a typed config, and back to YAML.

The loader knows nothing about any command: a recipe hands it its own config
class, whose sections bring their own fields, help and checks.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llmkit.config.schema import build, describe_type, setting_in_path, to_dict
from llmkit.config.secrets import redact_config, redacted_note
from llmkit.errors import ConfigError, ConfigIssue, UserError, not_utf8_message

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file; a missing file, a directory, bad bytes or a syntax error is a `UserError`."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.y*ml"))
        hint = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise UserError(f"{path} is a directory, not a config file; give the YAML file itself{hint}, or write a "
                        "starter config with `llmkit init`.")
    if not path.is_file():
        raise UserError(f"Config file not found: {path}. Check the path, or write a starter config with `llmkit init`.")
    problem = not_utf8_message(path)
    if problem:
        raise UserError(problem)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        if is_refused_tag(e):
            raise UserError(f"{path}, line {e.problem_mark.line + 1}: {refused_tag(e)}") from None
        raise UserError(f"{path} is not valid YAML: {_yaml_problem(e)}; fix the syntax there (brackets, quotes, "
                        "indentation with spaces, `key: value` pairs).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of sections (model:, data:, train:, ...), got a "
                        f"{type(data).__name__}. Write it as `section:` lines with indented `key: value` pairs.")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's problem and where it is, in one sentence (its own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    opened = f" ({context} that starts on line {start.line + 1})" if context and start else ""
    return f"{e.problem} on {where}{opened}"


def is_refused_tag(e: yaml.YAMLError) -> bool:
    """A tag the safe loader cannot build, e.g. !!python/object/apply:os.system."""
    return isinstance(e, yaml.constructor.ConstructorError) and "constructor for the tag" in (e.problem or "")


def refused_tag(e: yaml.YAMLError) -> str:
    """Why a YAML tag was refused: configs are read with the safe loader, so no tag can build objects or run code."""
    tag = re.search(r"tag '([^']*)'", e.problem).group(1).replace("tag:yaml.org,2002:", "!!")
    return (f"the YAML tag {tag} is not allowed. llmkit reads configs with YAML's safe loader, which refuses tags "
            "that build Python objects or run code; nothing was run. Write a plain value (string, number, list "
            "or mapping) instead.")


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
        except yaml.YAMLError as e:
            if is_refused_tag(e):
                issues.append(ConfigIssue(key, refused_tag(e)))
                continue
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
    path_issues = _override_path_issues(cls, overrides)
    if path_issues:
        raise ConfigError(path_issues, "overrides")
    raw = apply_overrides(raw, list(overrides))
    obj, issues = build(cls, raw)
    if issues:
        raise ConfigError(issues, str(path) if path else None)
    return obj


def _override_path_issues(cls: type, overrides: list[str]) -> list[ConfigIssue]:
    """Overrides that reach inside a plain setting, e.g. data.text_column.x=1."""
    issues = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        found = setting_in_path(cls, key) if sep else None
        if found:
            where, tp = found
            issues.append(ConfigIssue(where, f"is a setting ({describe_type(tp)}), not a section; cannot set {key}."))
    return issues


def dump_config(cfg: Any, command: str | None = None) -> str:
    """The resolved config as YAML text, with a header saying how to re-run it; secrets (train.hub_token, ...)
    are written as null, and the header says so."""
    header = [f"# Resolved by llmkit on {datetime.datetime.now().isoformat(timespec='seconds')}."]
    if command:
        header.append(f"# Re-run as is: llmkit {command} config.yaml")
    data, secrets = redact_config(to_dict(cfg))
    if secrets:
        header.append(redacted_note(secrets))
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body


def save_config(cfg: Any, path: str | Path, command: str | None = None) -> None:
    Path(path).write_text(dump_config(cfg, command))
