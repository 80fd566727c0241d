"""Write docs/config.md, the config reference, from the config classes' own help texts.

    python scripts/make_config_docs.py            # (re)write docs/config.md
    python scripts/make_config_docs.py --check    # exit 1, with a diff summary, when docs/config.md is stale

Built from `llmkit.commands.COMMANDS` alone: each command's config class (`Command.config_cls()`) is a dataclass
whose fields carry `metadata["help"]`; a field whose type is a dataclass is a section. A section used under the
same key by several commands (model, data, tokenizer, train, ...) is documented once and linked from each
command. A section may accept more keys than its fields (`passthrough_fields`, `open_passthrough`; see
llmkit/config/schema.py); the page says so, and lists a section's `passthrough_defaults` and `renamed_keys`.
The output depends only on the code and the installed transformers (train's defaults), never on the machine.
`tests/test_docs.py::test_config_reference_is_current` compares docs/config.md with `render()`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "config.md"
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from llmkit.config.schema import describe_type, section_type  # noqa: E402 (after the path set-up above)

MISSING = dataclasses.MISSING
REQUIRED = "**required**"


# ---------------------------------------------------------------- types, defaults, text


def yaml_value(value: Any) -> str:
    """A default as YAML writes it, in backticks."""
    import yaml

    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (tuple, set)):
        value = list(value)
    if isinstance(value, str) and not value.isprintable():  # a newline: YAML's flow style would break the line
        return "`" + json.dumps(value) + "`"
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    except yaml.YAMLError:
        text = str(value)
    return f"`{text}`"


def default_of(f: dataclasses.Field, tp: Any) -> str:
    if f.default is MISSING and f.default_factory is MISSING:
        return REQUIRED
    if section_type(tp) is not None:  # a section: its keys' defaults are listed below it
        return "`null`" if f.default is None else "—"
    return yaml_value(f.default if f.default is not MISSING else f.default_factory())


def cell(text: str) -> str:
    """Help text as one table cell: whitespace joined; what markdown would read as markup escaped."""
    text = " ".join(str(text).split())
    for char in ("\\", "|", "*", "<", ">", "[", "]"):
        text = text.replace(char, "\\" + char)
    return text


def class_doc(cls: type) -> str:
    """A section class's docstring (its first paragraph), unless it is the one dataclass made up."""
    doc = cls.__doc__ or ""
    if not doc.strip() or doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def fields_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init and f.name != "passthrough"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped (not - or _), spaces to -."""
    text = re.sub(r"^#+\s*", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


# ---------------------------------------------------------------- the page


def key_rows(cls: type, prefix: str) -> list[str]:
    """One table row per key of a section, nested sections' keys below their own row."""
    rows = []
    for f, tp in fields_of(cls):
        key = f"{prefix}.{f.name}"
        help_text = cell(f.metadata.get("help", ""))
        rows.append(f"| `{key}` | {cell(describe_type(tp))} | {default_of(f, tp)} | {help_text} |")
        nested = section_type(tp)
        if nested is not None:
            rows += key_rows(nested, key)
    return rows


def extra_keys(cls: type, prefix: str) -> list[str]:
    """What a section accepts beyond its fields, its changed defaults and the keys it refuses with a pointer."""
    lines = []
    if hasattr(cls, "passthrough_fields"):
        fields = cls.passthrough_fields()
        lines += ["", f"`{prefix}:` also takes every field of transformers' `TrainingArguments`, checked by name and "
                      f"type, e.g. "
                      f"`{prefix}.learning_rate`, `{prefix}.per_device_train_batch_size`, `{prefix}.eval_strategy`. "
                      "The keys above are llmkit's own."]
        defaults = cls.passthrough_defaults() if hasattr(cls, "passthrough_defaults") else {}
        if defaults:
            lines += ["", "llmkit's defaults where they differ from transformers' (written into the resolved config):",
                      "", "| key | llmkit's default | transformers' default |", "| --- | --- | --- |"]
            lines += [f"| `{prefix}.{name}` | {yaml_value(value)} | "
                      f"{yaml_value(fields[name][1]) if name in fields else '—'} |" for name, value in defaults.items()]
    elif getattr(cls, "open_passthrough", False):
        lines += ["", f"`{prefix}:` also takes keys not listed here: which ones are valid depends on the values "
                      "above (see their help), and `llmkit config validate` checks them."]
    renamed = cls.renamed_keys() if hasattr(cls, "renamed_keys") else {}
    if renamed:
        lines += ["", "Refused, with what to use instead:", "", "| key | instead |", "| --- | --- |"]
        lines += [f"| `{prefix}.{name}` | {cell(text)} |" for name, text in renamed.items()]
    return lines


TABLE_HEAD = ["| key | type | default | help |", "| --- | --- | --- | --- |"]


def section_block(heading: str, key: str, cls: type, intro: list[str]) -> list[str]:
    doc = class_doc(cls)
    lines = ["", heading, ""] + intro + ([doc, ""] if doc else [])
    return lines + TABLE_HEAD + key_rows(cls, key) + extra_keys(cls, key)


def render() -> str:
    """docs/config.md as `python scripts/make_config_docs.py` writes it."""
    from llmkit.commands import COMMANDS

    configs = {name: command.config_cls() for name, command in COMMANDS.items()}
    users: dict[tuple[str, type], list[str]] = {}  # (key, section class) -> commands using it
    for name, cls in configs.items():
        for f, tp in fields_of(cls):
            if section_type(tp) is not None:
                users.setdefault((f.name, section_type(tp)), []).append(name)
    shared: dict[str, type] = {}  # key -> the section class documented once under Shared sections
    for (key, cls), names in users.items():
        if len(names) > 1:
            shared.setdefault(key, cls)  # another class under the same key is documented with each command
    anchors: dict[tuple[str, str | None], str] = {}  # (key, command or None when shared) -> anchor
    headings: dict[tuple[str, str | None], str] = {}
    for key in shared:
        headings[(key, None)] = f"### `{key}`"
    for name, cls in configs.items():
        for f, tp in fields_of(cls):
            nested = section_type(tp)
            if nested is not None and shared.get(f.name) is not nested:
                suffix = f" (llmkit {name})" if f.name in shared or f.name != name else ""
                headings[(f.name, name)] = f"### `{f.name}`{suffix}"
    for ref, heading in headings.items():
        anchors[ref] = slug(heading)
    reserved = [slug("# Config reference"), slug("## Commands"), slug("## Shared sections")]
    reserved += [slug(f"## llmkit {name}") for name in configs]
    all_anchors = reserved + list(anchors.values())
    assert len(set(all_anchors)) == len(all_anchors), f"two headings share an anchor: {sorted(all_anchors)}"

    def link(key: str, name: str) -> str:
        """A link to the section `key` of command `name`: the shared one, or the command's own."""
        nested = section_type(next(tp for f, tp in fields_of(configs[name]) if f.name == key))
        ref = (key, None) if shared.get(key) is nested else (key, name)
        return f"[`{key}`](#{anchors[ref]})"

    out = ["# Config reference", "",
           "<!-- Generated by `python scripts/make_config_docs.py` from the config classes' help texts; do not edit "
           "by hand. tests/test_docs.py fails when this page is stale. -->", "",
           "Every key of every command's config, with its type, default and help text, generated from the config "
           "classes (`python scripts/make_config_docs.py`; `--check` says whether this page is current). "
           "`llmkit init COMMAND` writes a commented starter config from the same help texts, "
           "`llmkit config validate FILE` checks one and `llmkit config show FILE` prints it resolved. Any key can "
           "be overridden on the command line as `key.path=value` (parsed as YAML). What the sections do, with "
           "examples: [training.md](training.md) and the command pages ("
           + ", ".join(f"[{name}](commands/{name}.md)" for name in configs) + ").", "",
           "## Commands", "",
           "Sections used by several commands are documented once, under [Shared sections](#shared-sections).", "",
           "| command | sections and keys |", "| --- | --- |"]
    for name, cls in configs.items():
        keys = []
        for f, tp in fields_of(cls):
            keys.append(link(f.name, name) if section_type(tp) is not None else f"`{f.name}`")
        out.append(f"| [llmkit {name}](#{slug(f'## llmkit {name}')}) | {', '.join(keys)} |")
    for name, cls in configs.items():
        out += ["", f"## llmkit {name}", ""]
        doc = COMMANDS[name].help
        out += [f"{cell(doc)} Page: [commands/{name}.md](commands/{name}.md).", ""] + TABLE_HEAD
        own = []
        for f, tp in fields_of(cls):
            nested = section_type(tp)
            help_text = cell(f.metadata.get("help", ""))
            if nested is not None:
                ref = link(f.name, name)
                help_text = f"{help_text} Keys: {ref}." if help_text else f"Keys: {ref}."
                if (f.name, name) in anchors:
                    own.append((f.name, nested))
            out.append(f"| `{f.name}` | {cell(describe_type(tp))} | {default_of(f, tp)} | {help_text} |")
        for key, nested in own:
            out += section_block(headings[(key, name)], key, nested, [])
    out += ["", "## Shared sections"]
    for key, cls in shared.items():
        names = [name for name in configs if (key, cls) in users and name in users[(key, cls)]]
        used = "Used by " + ", ".join(f"[llmkit {n}](#{slug(f'## llmkit {n}')})" for n in names) + "."
        out += section_block(headings[(key, None)], key, cls, [used, ""])
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/config.md differs from the output")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: docs/config.md)")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current == text:
            print(f"{args.output}: current")
            return 0
        diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(args.output), "generated",
                                         lineterm="", n=0))
        changed = [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        print(f"{args.output} is stale: {sum(1 for x in changed if x[0] == '-')} line(s) to remove, "
              f"{sum(1 for x in changed if x[0] == '+')} to add. Run: python scripts/make_config_docs.py")
        print("\n".join(diff[:60]) + ("\n..." if len(diff) > 60 else ""))
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
