"""Strict mapping of plain dicts (from YAML) onto typed dataclasses.

Every problem is collected as a `ConfigIssue` naming its dotted key, so that a
config with five mistakes reports five lines at once. Sections are ordinary
dataclasses with `field(metadata={"help": ...})`; a section may also:

- define `validate(self) -> list[ConfigIssue]` for checks that span fields
  (keys in the returned issues are relative to the section);
- define `passthrough_fields()` (a classmethod returning `{name: (type, default)}`)
  to accept the fields of another dataclass, e.g. HF `TrainingArguments`;
  accepted values land in `self.passthrough`;
- set `open_passthrough = True` to accept any other key into `self.passthrough`
  when which keys are valid depends on a value (e.g. `adapter.method`); its
  `validate()` then checks them.

This is written by hand because neither transformers' `HfArgumentParser` (flat,
argparse-based, stops at the first error) nor a schema library gives nested
sections, "did you mean", and all errors at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from typing import Any, Literal, Union

from llmkit.errors import MAX_SHOWN_ISSUES, ConfigIssue, shown

_MISSING = dataclasses.MISSING
UNKNOWN_KEY = "unknown key"
INT64_MAX = 2**63 - 1  # what torch, numpy and the tokenizers hold in an int; a larger int setting overflows there
_YAML_BOOL_WORDS = "YAML reads unquoted yes/no/on/off/true/false as booleans"


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def join(prefix: str, key: str) -> str:
    if not prefix or key == "":
        return prefix or str(key)
    return f"{prefix}.{key}"


def describe_type(tp: Any) -> str:
    """A short human name for a type hint: 'int', 'list of str', 'one of: a, b'."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of: " + ", ".join(repr(v) for v in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if origin in (list, tuple, set):
        args = typing.get_args(tp)
        return f"a list of {describe_type(args[0])}" if args else "a list"
    if origin is dict:
        args = typing.get_args(tp)
        both = args and all(a is not Any for a in args)
        return f"a mapping of {describe_type(args[0])} to {describe_type(args[1])}" if both else "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of: " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return getattr(tp, "__name__", str(tp))


def _yaml_word(value: Any, choices: Any) -> Any:
    """YAML 1.1 reads an unquoted no / yes (also off / on) as a boolean: `eval_strategy: no` arrives as False.
    Where the choices hold that word, take the boolean for it."""
    if isinstance(value, bool):
        for word in (("yes", "on") if value else ("no", "off")):
            if word in choices:
                return word
    return value


class _Mismatch(Exception):
    """Raised inside coercion when a value does not fit a type; `reason` says why when "expected TYPE" would not
    (a number that is not finite, or too large)."""

    def __init__(self, reason: str | None = None):
        super().__init__(reason)
        self.reason = reason


def coerce(value: Any, tp: Any, key: str, issues: list[ConfigIssue], index: dict[str, list[str]]) -> Any:
    """Check `value` against type hint `tp`; return the (possibly converted) value.

    Raises `_Mismatch` when the value does not fit. Nested dataclasses record
    their own issues and never raise.
    """
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key, issues, index)
    if origin is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return _coerce_choice(value, tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            obj, sub = build(tp, value, key, index)
            issues.extend(sub)
            return obj
        raise _Mismatch
    if origin in (list, tuple, set, dict) or tp in (list, tuple, set, dict):
        return _coerce_container(value, tp, key, issues, index)
    return _coerce_scalar(value, tp)


def _coerce_union(value: Any, args: tuple, key: str, issues: list[ConfigIssue], index: dict[str, list[str]]) -> Any:
    if value is None and type(None) in args:
        return None
    reason = None
    for arg in sorted(args, key=_union_order):
        try:
            return coerce(value, arg, key, issues, index)
        except _Mismatch as e:
            reason = reason or e.reason
    raise _Mismatch(reason)


def _coerce_choice(value: Any, tp: Any) -> Any:
    """A Literal's or an Enum's value (the enum member's value); YAML's yes/no booleans read as those words."""
    if isinstance(tp, type) and isinstance(value, tp):
        return value.value
    choices = list(typing.get_args(tp)) if typing.get_origin(tp) is Literal else [m.value for m in tp]
    value = _yaml_word(value, choices)
    if value in choices:  # a list, not a set: a list or mapping value is not hashable
        return value
    raise _Mismatch


def _coerce_container(value: Any, tp: Any, key: str, issues: list[ConfigIssue], index: dict[str, list[str]]) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        kt, vt = args if args else (Any, Any)
        return {coerce(k, kt, key, issues, index): coerce(v, vt, join(key, k), issues, index) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise _Mismatch
    item = args[0] if args else Any
    return [coerce(v, item, f"{key}[{i}]", issues, index) for i, v in enumerate(value)]


def _coerce_scalar(value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch
        if abs(value) > INT64_MAX:
            raise _Mismatch(f"{shown(value)} is too large: an int setting holds at most {INT64_MAX:,} either way "
                            "(a 64-bit integer).")
        return value
    if tp is float:
        return _as_float(value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # a typing construct we do not check (Callable, TypeVar, ...): accept as is


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Mismatch
    try:
        number = float(value)  # YAML reads `5e-5` (no dot) as a string
    except ValueError:
        raise _Mismatch from None
    except OverflowError:  # an int of 309+ digits
        number = math.inf
    if math.isnan(number):  # YAML's .nan: no setting is meant to be "not a number"
        raise _Mismatch
    if math.isinf(number):  # .inf, or 1e309 beyond a float's range: training would overflow on it later
        raise _Mismatch(f"{shown(value)} is not a finite number (a float holds up to about 1.8e308); give a "
                        "finite value.")
    return number


def _union_order(tp: Any) -> int:
    # Try exact types before lenient ones so `int | str` keeps 5 as 5 and `float | str` keeps "abc" as a string.
    if tp is str:
        return 2
    if tp is float:
        return 1
    return 0


def suggest(key: str, candidates: list[str], index: dict[str, list[str]], here: str) -> str:
    """A 'did you mean' hint: a close name in the same section, or the same name in another section (at the top
    level: the section to nest it under)."""
    nested = [p for p in index.get(key, []) if "." in p]
    if not here and nested:
        return f" Write it nested under `{nested[0].rsplit('.', 1)[0]}:` (as {' or '.join(nested[:3])})."
    folded = {c.lower(): c for c in candidates}  # case differences count as close (EVAL -> eval)
    close = difflib.get_close_matches(key.lower(), list(folded), n=1, cutoff=0.6)
    if close:
        return f" Did you mean '{join(here, folded[close[0]])}'?"
    elsewhere = [p for p in index.get(key, []) if p != join(here, key)]
    if elsewhere:
        return f" Did you mean '{elsewhere[0]}'? (it belongs to another section)"
    return ""


def build(cls: type, data: dict, prefix: str = "", index: dict[str, list[str]] | None = None):
    """Build dataclass `cls` from `data`; return `(instance, issues)`.

    Missing required keys, unknown keys and values of the wrong type are all
    collected. The instance is built from the valid values and defaults, so
    callers can keep validating after problems were found.
    """
    index = index if index is not None else key_index(cls)
    issues: list[ConfigIssue] = []
    if not isinstance(data, dict):
        issues.append(ConfigIssue(prefix, f"expected a mapping (section), got {type(data).__name__} {shown(data)}."))
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "passthrough"}
    extra_fields = cls.passthrough_fields() if hasattr(cls, "passthrough_fields") else {}
    renamed = cls.renamed_keys() if hasattr(cls, "renamed_keys") else {}
    kwargs: dict[str, Any] = {}
    passthrough: dict[str, Any] = {}
    unknown = 0
    for key, value in data.items():
        if not isinstance(key, str) or not key:  # YAML keys may be numbers, booleans or null: `1: x`, `on: x`
            shown_key = "null" if key is None else shown(key)
            what = f"{shown_key} (an empty key)" if key in (None, "") else f"{type(key).__name__} {shown_key}"
            issues.append(ConfigIssue(join(prefix, shown_key), f"{UNKNOWN_KEY}: {what} is not a setting name. Write "
                                      "`name: value`, quoting a name YAML would read as something else (e.g. 'on':)."))
            continue
        full = join(prefix, key)
        if key in fields:
            tp, target = hints[key], kwargs
        elif key in extra_fields:
            tp, target = extra_fields[key][0], passthrough
        elif getattr(cls, "open_passthrough", False):
            tp, target = Any, passthrough
        elif key in renamed:
            issues.append(ConfigIssue(full, f"{UNKNOWN_KEY} here: {renamed[key]}"))
            continue
        else:
            # Suggestions cost a fuzzy match each; only the ones a ConfigError shows are worth it.
            unknown += 1
            hint = suggest(key, list(fields) + list(extra_fields), index, prefix) if unknown <= MAX_SHOWN_ISSUES else ""
            issues.append(ConfigIssue(full, f"{UNKNOWN_KEY}.{hint}"))
            continue
        try:
            target[key] = coerce(value, tp, full, issues, index)
        except _Mismatch as e:
            issues.append(ConfigIssue(full, e.reason or _mismatch_message(value, tp)))
    issues += _fill_required(fields, hints, data, kwargs, prefix)
    obj = cls(**kwargs)
    if extra_fields or getattr(cls, "open_passthrough", False):
        defaults = cls.passthrough_defaults() if hasattr(cls, "passthrough_defaults") else {}
        obj.passthrough = {**defaults, **passthrough}
    # Cross-field checks need well-typed values; an unknown key alone does not block them.
    blocking = [i for i in issues if not i.message.startswith(UNKNOWN_KEY)]
    if not blocking and hasattr(obj, "validate"):
        issues.extend(ConfigIssue(join(prefix, i.key), i.message) for i in obj.validate())
    return obj, issues


def _fill_required(fields: dict, hints: dict, data: dict, kwargs: dict, prefix: str) -> list[ConfigIssue]:
    """Required keys the section lacks: each reported, and given a placeholder so the rest can still be
    checked."""
    issues = []
    for name, f in fields.items():
        if name in kwargs or f.default is not _MISSING or f.default_factory is not _MISSING:
            continue
        if name not in data:  # a value of the wrong type was reported above
            issues.append(ConfigIssue(join(prefix, name), f"required key is missing. {help_of(f)}".strip()))
        kwargs[name] = _placeholder(hints[name])
    return issues


def _mismatch_message(value: Any, tp: Any) -> str:
    """'expected TYPE, got VALUE.', with why where YAML's reading is the likely cause."""
    # A scalar where a section belongs is usually a mis-indented line: name its type too.
    got = f"{type(value).__name__} {shown(value)}" if section_type(tp) is not None else shown(value)
    message = f"expected {describe_type(tp)}, got {got}"
    if isinstance(value, bool) and _accepts(tp, "yes"):
        return f"{message}: {_YAML_BOOL_WORDS}; quote it as you wrote it, e.g. {'yes' if value else 'no'!r}."
    if isinstance(value, list) and any(isinstance(v, bool) for v in value) and _accepts(tp, ["yes"]):
        meant = [("yes" if v else "no") if isinstance(v, bool) else v for v in value]
        return f"{message}: {_YAML_BOOL_WORDS}; quote them as you wrote them, e.g. {shown(meant)}."
    return message + "."


def _accepts(tp: Any, value: Any) -> bool:
    try:
        coerce(value, tp, "", [], {})
    except _Mismatch:
        return False
    return True


def _placeholder(tp: Any) -> Any:
    """A stand-in for a missing required value, so the rest of the config can still be checked."""
    if dataclasses.is_dataclass(tp):
        return tp(**{f.name: _placeholder(f.type) for f in dataclasses.fields(tp) if _required(f)})
    return None


def _required(f: dataclasses.Field) -> bool:
    return f.init and f.default is _MISSING and f.default_factory is _MISSING


def key_index(cls: type, prefix: str = "") -> dict[str, list[str]]:
    """Map every leaf key name to the dotted paths where it is valid (for cross-section suggestions)."""
    index: dict[str, list[str]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "passthrough":
            continue
        path = join(prefix, f.name)
        index.setdefault(f.name, []).append(path)
        section = section_type(hints[f.name])
        if section is not None:
            for k, paths in key_index(section, path).items():
                index.setdefault(k, []).extend(paths)
    if hasattr(cls, "passthrough_fields"):
        for name in cls.passthrough_fields():
            index.setdefault(name, []).append(join(prefix, name))
    return index


def setting_in_path(cls: type, dotted: str) -> tuple[str, Any] | None:
    """The part of a dotted override key that names a plain setting, not a section, with its type.

    `data.text_column.x=1` would otherwise turn `data.text_column` into a mapping and be reported as a
    wrong type, hiding that the key path itself is wrong. Unknown keys are left to `build` (it suggests names).
    """
    parts = dotted.split(".")
    tp: Any = cls
    for depth, part in enumerate(parts[:-1]):
        section = section_type(tp)
        if section is None:
            return None
        fields = {f.name for f in dataclasses.fields(section) if f.init and f.name != "passthrough"}
        extra = section.passthrough_fields() if hasattr(section, "passthrough_fields") else {}
        if part in fields:
            tp = typing.get_type_hints(section)[part]
        elif part in extra:
            tp = extra[part][0]
        else:
            return None
        if section_type(tp) is None and not _accepts_mapping(tp):
            return ".".join(parts[: depth + 1]), tp
    return None


def _accepts_mapping(tp: Any) -> bool:
    return _accepts(tp, {})


def section_type(tp: Any) -> type | None:
    """The dataclass inside `tp` (also inside `X | None`), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (passthrough values merged in), ready for YAML."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.name == "passthrough":
                continue
            out[f.name] = to_dict(getattr(obj, f.name))
        out.update({k: to_dict(v) for k, v in getattr(obj, "passthrough", {}).items()})
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj
