"""YAML + dotted `key=value` overrides -> a typed config, and back to YAML.

The loader knows nothing about any command: a recipe hands it its own config
class, whose sections bring their own fields, help and checks.
"""

from __future__ import annotations

import datetime
import errno
import re
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llmkit.config.schema import UNKNOWN_KEY, build, describe_type, setting_in_path, to_dict
from llmkit.config.secrets import redact_config, redacted_note
from llmkit.errors import SHOWN_LIMIT, ConfigError, ConfigIssue, UserError, first_line, not_utf8_message, shown

T = TypeVar("T")

# What reading one config may cost. A config is a few kilobytes holding a few hundred values under 10 levels deep;
# these bounds are far above that and far below harm: a 700-byte "billion laughs" file (anchors of anchors) expands
# to 10**9 values and held llmkit at 4 GB, and 10,000 nested brackets overflow Python's recursion limit.
MAX_CONFIG_BYTES = 10 * 1024 * 1024
MAX_YAML_VALUES = 100_000  # values in one document, its aliases expanded
MAX_YAML_DEPTH = 100  # levels of nesting
_MERGE_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")  # `<<:` (and `=`) keys are not settings


class YamlRefused(Exception):
    """A YAML document the config loader will not build, and why; `line` is 1-based."""

    def __init__(self, line: int, problem: str):
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader (no tag builds objects or runs code), stricter where a config needs it.

    A key given twice in one mapping is refused (plain YAML keeps the last one silently: a second `train:`
    section would drop the first). The work is bounded: aliases may not expand the document past
    MAX_YAML_VALUES values nor refer to the value that holds them, and nesting stops at MAX_YAML_DEPTH. A scalar
    its type cannot read (a 5,000-digit integer, the date 2024-13-45) is refused with its line.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []  # where the node being composed sits, e.g. ["train", "max_steps"]
        self._sizes: dict[int, int] = {}  # id(node) -> values in it with aliases expanded
        self._open_anchors: set[str] = set()  # anchors of nodes still being composed
        self._has_aliases = False

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise YamlRefused(event.start_mark.line + 1, f"the alias *{event.anchor} is inside the value its "
                                  f"anchor &{event.anchor} names, which makes the value endless; write it out.")
            self._has_aliases = True
            return super().compose_node(parent, index)
        if len(self._path) >= MAX_YAML_DEPTH:
            raise YamlRefused(event.start_mark.line + 1, f"values are nested more than {MAX_YAML_DEPTH} levels "
                              "deep; a config needs a few. Check the brackets and indentation.")
        if isinstance(index, yaml.Node):
            self._path.append(index.value if isinstance(index, yaml.ScalarNode) else "?")
        else:
            self._path.append(f"[{index}]" if isinstance(index, int) else "")
        if event.anchor is not None:
            self._open_anchors.add(event.anchor)
        node = super().compose_node(parent, index)
        self._open_anchors.discard(event.anchor)
        if isinstance(node, yaml.MappingNode):
            self._check_keys(node)
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        if self._sizes[id(node)] > MAX_YAML_VALUES:
            if self._has_aliases:
                problem = (f"aliases expand too far: each *name repeats all its &name holds, and expanded this "
                           f"document would hold more than {MAX_YAML_VALUES:,} values, far more than a config "
                           "needs; nothing was built. Write the values out, without aliases of aliases.")
            else:
                problem = (f"the document holds more than {MAX_YAML_VALUES:,} values, far more than a config needs; "
                           "give the YAML config, not a data file.")
            raise YamlRefused(node.start_mark.line + 1, problem)
        self._path.pop()
        return node

    def _check_keys(self, node: yaml.MappingNode) -> None:
        """Every key is a plain value (not a list or mapping) and is given once."""
        seen: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag in _MERGE_TAGS:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise YamlRefused(line, f"a key of {self._dotted() or 'the top level'} is a {kind} (`? [a, b]` or "
                                  "`[a, b]: value`); keys are setting names. Write `name: value`.")
            key = self.construct_object(key_node)
            if key in seen:
                first_key, first_value = seen[key]
                first = first_key.start_mark.line + 1
                where = f"line {line}" if first == line else f"lines {first} and {line}"
                if first_key.value != key_node.value:  # `1:` and `on:`, `null:` and `~:`
                    where += f", written {first_key.value} and {key_node.value}, which YAML reads as one key"
                both_sections = isinstance(first_value, yaml.MappingNode) and isinstance(value_node, yaml.MappingNode)
                merge = f", or merge the two into one `{key_node.value}:` block" if both_sections else ""
                raise YamlRefused(line, f"the key {self._dotted(key_node.value)} appears twice ({where}); YAML would "
                                  f"silently keep only the last. Keep one of them{merge}.")
            seen[key] = key_node, value_node

    def _dotted(self, key: str | None = None) -> str:
        """The dotted key of the node being composed (with `key` appended), e.g. data.files[0].path."""
        parts = [p for p in self._path if p] + ([key] if key is not None else [])
        text = "".join(p if p.startswith("[") or i == 0 else f".{p}" for i, p in enumerate(parts))
        return text if len(text) <= SHOWN_LIMIT else f"{text[:SHOWN_LIMIT]}... ({len(text):,} characters)"

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:  # int("1" * 5000), date(2024, 13, 45): not a YAMLError
            tag = node.tag.replace("tag:yaml.org,2002:", "")
            if tag == "int" and "digits" in str(e):
                why = f"is an integer of {len(node.value):,} digits, larger than any setting takes"
            else:
                why = f"cannot be read as a {tag} ({first_line(e).rstrip('.')})"
            raise YamlRefused(node.start_mark.line + 1, f"{shown(node.value, 40)} {why}; write the value it should "
                              "be, or quote it to keep it as text.") from None


def parse_yaml(text: str) -> Any:
    """One YAML document with `ConfigLoader`; raises `YamlRefused` or `yaml.YAMLError`."""
    return yaml.load(text, Loader=ConfigLoader)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file; a missing file, a directory, a FIFO or device, bad bytes, a duplicated key, runaway
    aliases or a syntax error is a `UserError`."""
    path = Path(path)
    text = _config_text(path)
    try:
        data = parse_yaml(text)
    except YamlRefused as e:
        raise UserError(f"{path}, {e}") from None
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


def _config_text(path: Path) -> str:
    """The text of a config file, checked before it is opened: only a regular file of sane size is read, so a
    FIFO (which would block the read forever), a device or a huge file never is."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"Config file not found: {path}. Check the path, or write a starter config with "
                        "`llmkit init`.") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _not_a_file(path, "a symlink loop: following its links comes back to itself") from None
        raise UserError(f"Cannot read the config file {path}: {e.strerror}. Check the path and its "
                        "permissions.") from None
    if stat.S_ISDIR(info.st_mode):
        inside = sorted(p.name for p in path.glob("*.y*ml"))
        hint = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise UserError(f"{path} is a directory, not a config file; give the YAML file itself{hint}, or write a "
                        "starter config with `llmkit init`.")
    if not stat.S_ISREG(info.st_mode):
        raise _not_a_file(path, _file_kind(info.st_mode))
    if info.st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path} is {info.st_size / 2**20:,.1f} MB, too large to be a config (the limit is "
                        f"{MAX_CONFIG_BYTES // 2**20} MB); give the YAML config file, not a data file or a model.")
    try:
        problem = not_utf8_message(path)
        if problem:
            raise UserError(problem)
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"Cannot read the config file {path}: {e.strerror}. Check its permissions.") from None


def _not_a_file(path: Path, kind: str) -> UserError:
    return UserError(f"{path} is not a regular file (it is {kind}); give the path of a YAML config file.")


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


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
    """Apply `a.b.c=value` overrides; values are parsed as YAML (`true`, `3`, `[a, b]`, `null`) by the same loader as
    config files. A key given twice keeps the last value, as command-line options do."""
    issues = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            issues.append(ConfigIssue(item, "an override must look like key.path=value, e.g. "
                                            "train.learning_rate=3e-5."))
            continue
        parts = key.split(".")
        if "" in parts:
            issues.append(ConfigIssue(key, "an override key is dotted setting names with nothing empty between the "
                                           "dots, e.g. train.learning_rate=3e-5."))
            continue
        try:
            value = parse_yaml(raw) if raw != "" else None
        except YamlRefused as e:
            issues.append(ConfigIssue(key, e.problem))
            continue
        except yaml.YAMLError as e:
            if is_refused_tag(e):
                issues.append(ConfigIssue(key, refused_tag(e)))
                continue
            value = raw  # not YAML (e.g. `a: b: c`): the text as given
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                issues.append(ConfigIssue(where, f"is {shown(child)}, not a section; cannot set {key}. Set {where} "
                                                 "itself, or check the key's spelling."))
                break
            node = child
        else:
            node[parts[-1]] = value
    if issues:
        raise ConfigError(issues, "overrides")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = (), data: dict | None = None,
                foreign_sections: dict[str, str] | None = None) -> T:
    """Build `cls` from a YAML file (or `data`) plus overrides; raise `ConfigError` listing every problem.

    `foreign_sections` maps a top-level section of other commands' configs to the commands it belongs to, as
    words, e.g. `{"prompt": "`llmkit prompt`"}`: such a section in this config (not a key of `cls`) is reported as
    belonging to them rather than as an unknown key, since the likely mistake is running the wrong command.
    """
    raw = dict(data or {})
    if path is not None:
        raw = read_yaml(path)
    path_issues = _override_path_issues(cls, overrides)
    if path_issues:
        raise ConfigError(path_issues, "overrides")
    raw = apply_overrides(raw, list(overrides))
    obj, issues = build(cls, raw)
    for i, issue in enumerate(issues):
        command = (foreign_sections or {}).get(issue.key)
        if command and issue.message.startswith(UNKNOWN_KEY):
            issues[i] = ConfigIssue(issue.key, f"`{issue.key}:` belongs to {command}, not this command; remove it "
                                               "or run that command.")
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
            issues.append(ConfigIssue(where, f"is a setting ({describe_type(tp)}), not a section; cannot set {key}. "
                                             f"Set {where}=VALUE itself."))
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
