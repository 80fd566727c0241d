"""The editor schema (`llmkit config schema COMMAND`, the `$schema` line `llmkit init` writes): every shipped and
starter config matches its command's schema, mistakes are flagged, and nothing the loader accepts is rejected."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import re
import typing
from pathlib import Path

import pytest
from jsonschema import Draft7Validator
from typer.testing import CliRunner

from llmkit import commands
from llmkit.cli import app
from llmkit.config import read_yaml
from llmkit.config.adapter import AdapterSection
from llmkit.config.json_schema import FLOAT_STRING, MODELINE, json_schema, modeline, schema_path
from llmkit.config.launch import is_accelerate_config
from llmkit.config.loader import parse_yaml
from llmkit.config.schema import _Mismatch, build, coerce, section_type
from llmkit.config.sections import TrainConfig, training_argument_fields
from llmkit.config.starter import starter_yaml
from llmkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [p for p in sorted((ROOT / "configs").rglob("*.yaml")) if not is_accelerate_config(read_yaml(p))]
runner = CliRunner()


@functools.cache
def schema_of(command: str) -> dict:
    return json_schema(command, commands.get(command).config_cls())


def validator(command: str) -> Draft7Validator:
    return Draft7Validator(schema_of(command))


def schema_errors(command: str, data: dict) -> list[str]:
    """Each problem as 'dotted.path: message'."""
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(command).iter_errors(data)]


# ---------------------------------------------------------------- the schema itself


@pytest.mark.parametrize("command", list(commands.COMMANDS))
def test_schema_is_a_valid_draft7_schema_of_plain_json(command):
    schema = schema_of(command)
    Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["title"] == f"llmkit {command} config"
    assert schema["additionalProperties"] is False  # an unknown top-level key is flagged
    assert json.loads(json.dumps(schema, allow_nan=False)) == schema  # plain JSON, no NaN / Infinity


def test_schema_carries_help_defaults_and_required_keys():
    finetune = schema_of("finetune")["properties"]
    assert finetune["data"]["properties"]["text_column"] == {
        "type": "string", "description": "Column holding the text.", "default": "text"}
    assert finetune["task"]["properties"]["type"]["enum"][:2] == ["sequence-classification", "token-classification"]
    assert schema_of("finetune")["required"] == ["model", "data"]
    train = finetune["train"]["properties"]
    assert train["num_train_epochs"]["default"] == 3.0  # llmkit's own default, not HF's
    assert train["learning_rate"]["default"] == 5e-05 and "learning rate" in train["learning_rate"]["description"]
    assert "passthrough" not in finetune["train"]["properties"]  # internal, not a key
    assert schema_of("eval")["required"] == ["model"]  # eval inherits data: from the run directory it evaluates
    assert schema_of("prompt")["properties"]["prompt"]["required"] == ["template", "verbalizer"]


# ---------------------------------------------------------------- configs that must pass


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_matches_its_schema(path):
    command = path.parent.name  # configs/<command>/...
    data = read_yaml(path)
    assert commands.infer(data, path) == command
    assert schema_errors(command, data) == []


def test_every_command_has_a_shipped_config_checked_here():
    assert {p.parent.name for p in CONFIGS} == set(commands.COMMANDS)


@pytest.mark.parametrize("command", list(commands.COMMANDS))
def test_starter_config_matches_its_schema(command):
    data = parse_yaml(starter_yaml(command, commands.get(command).config_cls()))
    assert schema_errors(command, data) == []


# Forms the loader accepts that a plain reading of the types would not (YAML 1.1 as PyYAML reads it).
ACCEPTED = {
    "a float as YAML 1.1 reads 5e-5: a string": ("finetune", "train:\n  learning_rate: 5e-5\n  weight_decay: 1_000.5"),
    "an int where a float goes, a whole float where an int goes": (
        "finetune", "train:\n  num_train_epochs: 3\n  max_steps: 10.0\ntask:\n  threshold: 1"),
    "YAML's unquoted no (false) for the choice 'no'": ("finetune", "train:\n  eval_strategy: no\n  save_strategy: no"),
    "a string or a boolean": ("finetune", "train:\n  include_num_input_tokens_seen: true"),
    "Literal[False] in a union": ("finetune", "train:\n  trackio_static_space_id: false"),
    "one file or a list": ("finetune", "data:\n  train_file: [a.csv, b.csv]\n  validation_file: dev.csv"),
    "null for optional settings and sections": (
        "finetune", "tokenizer:\n  train: null\n  padding_side: null\nmodel:\n  from_config: null"),
    "int keys": ("distill", "distill:\n  teacher: t\n  layer_map: {0: 1, 2: 3}\ndata: {}"),
    "str and int verbalizer keys": (
        "prompt", "model: {name_or_path: m}\ndata: {}\nprompt:\n  template: '{text} {mask}'\n  verbalizer: "
                  "{0: [bad], 1: good, pos: great}"),
    "PEFT options of the default method (lora)": (
        "adapter", "adapter:\n  r: 8\n  lora_dropout: 0\n  target_modules: all-linear\n  init_lora_weights: gaussian"),
    "PEFT options of another method": ("adapter", "adapter:\n  method: ia3\n  feedforward_modules: [dense]"),
    "bottleneck options": ("adapter", "adapter:\n  method: bottleneck\n  placement: houlsby\n  reduction_factor: 8"),
    "a soft prompt in prompt's adapter": (
        "prompt", "model: {name_or_path: m}\ndata: {}\nprompt: {template: x, verbalizer: {a: b}, mode: soft-prompt}\n"
                  "adapter:\n  method: prompt_tuning\n  num_virtual_tokens: 8"),
    "a list of compress steps": (
        "compress", "model: {name_or_path: m}\ndata: {}\ncompress:\n  steps:\n  - prune: {heads: 2, ffn_fraction: 0.5}"
                    "\n  - quantize: {method: int8-dynamic}"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_forms_the_loader_accepts_match_the_schema(case):
    command, text = ACCEPTED[case]
    data = parse_yaml(text)
    base = {"model": {"name_or_path": "m"}, "data": {}} if command in ("finetune", "adapter") else {}
    data = {**base, **data}
    _, issues = build(commands.get(command).config_cls(), data)
    type_issues = [i for i in issues if i.message.startswith(("expected", "unknown key", "required key"))
                   or "has no option" in i.message]
    assert type_issues == [], "the loader itself refuses this form; fix the case"
    assert schema_errors(command, data) == []


def test_an_eval_config_without_data_matches_the_schema_when_the_run_gives_it(tmp_path):
    """llmkit eval RUN's config may leave data: out: it is inherited from the run directory it evaluates."""
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "config.yaml").write_text("data:\n  text_column: sentence\n")
    raw = {"model": {"name_or_path": str(run)}}
    prepared = commands.get("eval").recipe().prepare_raw_config(raw)
    _, issues = build(commands.get("eval").config_cls(), prepared)
    assert not [i for i in issues if i.message.startswith("required key")]
    assert schema_errors("eval", raw) == []


# ---------------------------------------------------------------- mistakes the schema flags


REJECTED = {
    "a mistyped top-level section": ("finetune", "modle: {name_or_path: m}", "modle"),
    "a mistyped train key": ("finetune", "train:\n  learning_rat: 0.1", "train.learning_rat"),
    "a mistyped data key": ("finetune", "data:\n  trian_file: x.csv", "data.trian_file"),
    "a wrong choice": ("finetune", "task:\n  type: classification", "task.type"),
    "a wrong TrainingArguments choice": ("finetune", "train:\n  eval_strategy: sometimes", "train.eval_strategy"),
    "a wrong choice of a str TrainingArguments field": ("finetune", "train:\n  log_level: loud", "train.log_level"),
    "text for an int": ("finetune", "data:\n  max_length: long", "data.max_length"),
    "a boolean for an int": ("finetune", "data:\n  max_length: true", "data.max_length"),
    "an int past 64 bits": ("finetune", "model:\n  freeze_layers: 99999999999999999999", "model.freeze_layers"),
    "text for a float": ("finetune", "train:\n  learning_rate: fast", "train.learning_rate"),
    "an infinite float": ("finetune", "train:\n  learning_rate: .inf", "train.learning_rate"),
    "a list for a string": ("finetune", "model:\n  name_or_path: [a, b]", "model.name_or_path"),
    "a scalar for a section": ("finetune", "train: 3", "train"),
    "a key llmkit sets itself": ("finetune", "train:\n  output_dir: x", "train.output_dir"),
    "an unknown adapter method": ("adapter", "adapter:\n  method: lora2", "adapter.method"),
    "a mistyped option of the default method": ("adapter", "adapter:\n  r: 8\n  lora_alph: 16", "adapter"),
    "a wrong type for a PEFT option": ("adapter", "adapter:\n  method: lora\n  r: eight", "adapter.r"),
    "a PEFT option on bottleneck adapters": ("adapter", "adapter:\n  method: bottleneck\n  r: 8", "adapter"),
    "a bottleneck option on lora": ("adapter", "adapter:\n  method: lora\n  placement: houlsby", "adapter.placement"),
    "a missing required key": ("prompt", "model: {name_or_path: m}\ndata: {}\nprompt:\n  verbalizer: {a: b}",
                               "prompt"),
    "a section missing its required key": ("pretrain", "model:\n  from_config: {num_layers: 2}\ndata: {}",
                                           "model.from_config"),
    "a wrong type in a list of sections": (
        "compress", "model: {name_or_path: m}\ndata: {}\ncompress:\n  steps:\n  - prune: {heads: two}",
        "compress.steps[0].prune.heads"),
    "a non-int key of an int mapping": ("distill", "distill:\n  teacher: t\n  layer_map: {a: 1}\ndata: {}",
                                        "distill.layer_map"),
    "a wrong eval task": ("eval", "model: {name_or_path: m}\neval:\n  task: classify", "eval.task"),
    "a section of another command": ("eval", "model: {name_or_path: m}\ntrain: {seed: 1}", "train"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_mistakes_are_flagged_where_the_loader_flags_them(case):
    command, text, key = REJECTED[case]
    data = parse_yaml(text)
    base = {"model": {"name_or_path": "m"}, "data": {}} if command in ("finetune", "adapter") else {}
    data = {**base, **data}
    errors = schema_errors(command, data)
    assert errors, f"the schema accepts {text!r}"
    _, issues = build(commands.get(command).config_cls(), data)
    issue_keys = [i.key for i in issues]
    assert any(k == key or k.startswith(key + ".") for k in issue_keys), f"the loader does not flag {key}: {issues}"
    # the schema names the same key, or for a key that is not allowed there, its section and the key
    where = key.replace("[", ".").replace("]", "")
    parent, _, name = where.rpartition(".")
    assert any(e.startswith(where) or e.startswith(f"{parent}: ") and repr(name) in e for e in errors), errors


# ---------------------------------------------------------------- the schema against the loader, type by type

PROBES = [None, True, False, 0, 1, -1, 3.0, 2.5, 2**63, -(2**63) + 1, math.inf, math.nan, "", "abc", "5e-5", "1_000.5",
          " 2 ", "inf", "nan", "1e400", "yes", "no", "on", "off", "auto", "lora", "clm", "mean", [], ["a"], [1, 2],
          [1.5], ["a", 1], [True], {}, {"a": "b"}, {1: 2}, {"a": 1}, {"a": ["b"]}, {True: 1}, {"1": 2}]


def _loader_takes(tp, value) -> bool:
    issues = []
    try:
        coerce(value, tp, "key", issues, {})
    except _Mismatch:
        return False
    return not issues


def _schema_lenient(value) -> bool:
    """What the schema lets through and the loader refuses, because JSON Schema cannot say it: NaN (no JSON value;
    PyYAML's .nan), a number string beyond a float's range, and a mapping key of an int mapping that YAML gave as
    text or a boolean (an editor sees every key as text)."""
    if isinstance(value, float) and math.isnan(value) or value == "1e400":
        return True
    return isinstance(value, dict) and any(isinstance(k, (str, bool)) for k in value)


def _leaf_settings(cls, schema: dict, prefix: str = ""):
    """(dotted key, type hint, its schema) of every setting that is not a section, across nested sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "passthrough":
            continue
        prop = schema["properties"][f.name]
        nested = section_type(hints[f.name])
        if nested is not None and typing.get_origin(hints[f.name]) is list:  # compress.steps: a list of sections
            prop = prop["items"]
        if nested is not None:
            section = next((m for m in prop.get("anyOf", [prop]) if "properties" in m), prop)
            yield from _leaf_settings(nested, section, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name], prop


def _all_leaf_settings():
    seen = {}
    for command in commands.COMMANDS:
        for key, tp, prop in _leaf_settings(commands.get(command).config_cls(), schema_of(command)):
            seen.setdefault(key, (tp, prop))
    return seen


# Settings typed str whose choices the section's validate() checks (AdapterSection: the installed PEFT methods); the
# schema lists those choices: test_adapter_options_match_the_loader and the REJECTED cases hold them.
CHOICES_FROM_VALIDATE = {"adapter.method"}


def test_every_setting_accepts_exactly_what_the_loader_accepts():
    wrong = []
    for key, (tp, prop) in _all_leaf_settings().items():
        if key in CHOICES_FROM_VALIDATE:
            continue
        check = Draft7Validator(prop)
        for value in PROBES:
            loader, schema = _loader_takes(tp, value), check.is_valid(value)
            if loader and not schema:
                wrong.append(f"{key}: the schema rejects {value!r}, which the loader accepts")
            elif schema and not loader and not _schema_lenient(value):
                wrong.append(f"{key}: the schema accepts {value!r}, which the loader refuses")
    assert not wrong, "\n".join(wrong)


def _built(cls, data):
    """The loader's issues for `data`, or None when the loader crashes on it (not an acceptance either)."""
    try:
        return build(cls, data)[1]
    except Exception:  # e.g. train.accelerator_config: "x" (TrainingArguments opens it as a file)
        return None


@pytest.mark.filterwarnings("ignore")
def test_train_keys_accept_everything_the_loader_accepts():
    train = Draft7Validator(schema_of("finetune")["properties"]["train"])
    build(TrainConfig, {})
    wrong = [f"train.{key}: {value!r}" for key in training_argument_fields() for value in PROBES
             if _built(TrainConfig, {key: value}) == [] and not train.is_valid({key: value})]
    assert not wrong, "the schema rejects what the loader accepts:\n" + "\n".join(wrong)


@pytest.mark.parametrize("method", ["lora", "ia3", "loha", "prompt_tuning", "prefix_tuning", "bottleneck"])
def test_adapter_options_match_the_loader(method):
    from llmkit.models.adapters import method_options

    adapter = Draft7Validator(schema_of("adapter")["properties"]["adapter"])
    options = list(method_options(method)) if method != "bottleneck" else ["placement", "reduction_factor", "r"]
    wrong = []
    for name in (method, method.upper(), method + "2", ""):
        loader, schema = _built(AdapterSection, {"method": name}) == [], adapter.is_valid({"method": name})
        if loader != schema:
            wrong.append(f"method {name!r}: the loader {'accepts' if loader else 'refuses'} it, the schema not")
    for key in options:
        for value in PROBES:
            data = {"method": method, key: value}
            issues = _built(AdapterSection, data)
            if issues is None:
                continue
            loader, schema = issues == [], adapter.is_valid(data)
            if loader and not schema:
                wrong.append(f"{method} {key}: the schema rejects {value!r}, which the loader accepts")
            # what only validate() checks (r >= 1, a dropout in [0, 1]) is left to llmkit config validate
            elif schema and not loader and not _schema_lenient(value) and not any(
                    "must be" in i.message for i in issues):
                wrong.append(f"{method} {key}: the schema accepts {value!r}, which the loader refuses: {issues}")
    assert not wrong, "\n".join(wrong)


def test_float_strings_are_what_python_float_reads():
    rng = random.Random(0)
    samples = ["5e-5", "1_000.5", " .5 ", "1.", "-1e+3", "1__0", "_1", "1_", "e5", ".", "1e", "inf", "nan", "1e1_0"]
    samples += ["".join(rng.choice("0123456789_.eE+- ") for _ in range(rng.randint(1, 7))) for _ in range(5000)]
    wrong = []
    for text in samples:
        try:
            float(text)
            reads = text.strip().lstrip("+-").lower() not in ("inf", "infinity", "nan")  # the loader refuses those
        except ValueError:
            reads = False
        if reads != (re.search(FLOAT_STRING, text) is not None):
            wrong.append(repr(text))
    assert not wrong, ", ".join(wrong[:20])


# ---------------------------------------------------------------- the command line


def test_config_schema_prints_a_draft7_schema_and_writes_it_to_a_file(tmp_path):
    result = runner.invoke(app, ["config", "schema", "finetune"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    Draft7Validator.check_schema(printed)
    assert printed["title"] == "llmkit finetune config"
    out = tmp_path / "finetune.schema.json"
    written = runner.invoke(app, ["config", "schema", "finetune", "--output", str(out)])
    assert written.exit_code == 0, written.output
    assert written.stdout == "" and json.loads(out.read_text()) == printed
    mine = tmp_path / "finetune.yaml"  # a slip of -o onto the user's own config: refused, the file untouched
    mine.write_text("model: {name_or_path: my-model}\n")
    refused = runner.invoke(app, ["config", "schema", "finetune", "-o", str(mine)])
    assert refused.exit_code == 2 and "is not a schema llmkit wrote; nothing was changed" in refused.output
    assert mine.read_text() == "model: {name_or_path: my-model}\n"


def test_config_schema_refuses_an_unknown_command_and_a_missing_folder(tmp_path):
    result = runner.invoke(app, ["config", "schema", "fintune"])
    assert result.exit_code == 2
    assert "config schema: unknown command 'fintune'; choose one of: pretrain, finetune," in result.output
    missing = tmp_path / "nowhere" / "x.json"
    result = runner.invoke(app, ["config", "schema", "eval", "-o", str(missing)])
    assert result.exit_code == 2 and f"the folder {missing.parent} does not exist" in result.output


def _header(text: str) -> list[str]:
    """The comment lines before the first YAML content: where yaml-language-server reads its modeline."""
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            break
        lines.append(line)
    return lines


def test_init_writes_the_schema_beside_the_config_and_the_line_that_points_at_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text("some text\n" * 20)
    (tmp_path / "valid.txt").write_text("more text\n" * 5)
    result = runner.invoke(app, ["init", "pretrain"])
    assert result.exit_code == 0, result.output
    config = tmp_path / "pretrain.yaml"
    text = config.read_text()
    assert text.startswith("# llmkit pretrain config.")
    line = modeline("pretrain")
    assert line in _header(text) and text.count(MODELINE) == 1
    schema_file = config.parent / line.removeprefix(MODELINE)  # relative to the YAML file, as the editor reads it
    assert schema_file == schema_path(config, "pretrain") and schema_file.is_file()
    printed = runner.invoke(app, ["config", "schema", "pretrain"]).stdout
    assert json.loads(schema_file.read_text()) == json.loads(printed)
    assert schema_errors("pretrain", read_yaml(config)) == []
    validated = runner.invoke(app, ["config", "validate", str(config)])
    assert validated.exit_code == 0 and "valid pretrain config" in validated.output, validated.output
    schema_file.write_text('{"title": "llmkit pretrain config"}')  # a stale schema is replaced with the current one
    again = runner.invoke(app, ["init", "pretrain", "--force"])
    assert again.exit_code == 0, again.output
    assert json.loads(schema_file.read_text()) == json.loads(printed)
    schema_file.write_text("my notes")  # a file llmkit did not write is never replaced
    refused = runner.invoke(app, ["init", "pretrain", "--force"])
    assert refused.exit_code == 2 and "is not a schema llmkit wrote; nothing was changed" in refused.output
    assert schema_file.read_text() == "my notes"


def test_init_into_another_folder_puts_the_schema_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    result = runner.invoke(app, ["init", "eval", "--output", "sub/my-eval.yaml"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sub" / ".llmkit-schema" / "eval.schema.json").is_file()
    assert not (tmp_path / ".llmkit-schema").exists()
    missing = runner.invoke(app, ["init", "eval", "--output", "nowhere/eval.yaml"])
    assert missing.exit_code == 2 and "the folder nowhere does not exist" in missing.output


@pytest.mark.parametrize("command", list(commands.COMMANDS))
def test_the_schema_line_changes_nothing_the_loader_sees(command, tmp_path, monkeypatch):
    """The config `llmkit init` writes loads and validates exactly as the starter config without the line does."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["init", command, "--output", "with.yaml"]).exit_code == 0
    plain = starter_yaml(command, commands.get(command).config_cls())
    (tmp_path / "without.yaml").write_text(plain)
    assert (tmp_path / "with.yaml").read_text().replace(modeline(command) + "\n", "") == plain
    assert read_yaml(tmp_path / "with.yaml") == read_yaml(tmp_path / "without.yaml")
    results = [runner.invoke(app, ["config", "validate", name, "--command", command])
               for name in ("with.yaml", "without.yaml")]
    assert results[0].exit_code == results[1].exit_code
    assert results[0].output.replace("with.yaml", "FILE") == results[1].output.replace("without.yaml", "FILE")


def test_a_config_error_and_the_schema_agree_on_a_shipped_config_with_a_mistake():
    data = read_yaml(ROOT / "configs" / "finetune" / "quickstart.yaml")
    data["train"]["learning_rat"] = data["train"].pop("learning_rate")
    assert any(e.startswith("train: Additional properties are not allowed ('learning_rat'")
               for e in schema_errors("finetune", data))
    with pytest.raises(ConfigError) as exc:
        commands.load_dict("finetune", data)
    assert "train.learning_rat: unknown key. Did you mean 'train.learning_rate'?" in str(exc.value)


# ---------------------------------------------------------------- the docs' example configs


def _without_required(node):
    """The schema with every `required` list taken out: a doc's example may show one section only."""
    if isinstance(node, dict):
        return {k: _without_required(v) for k, v in node.items() if k != "required"}
    if isinstance(node, list):
        return [_without_required(v) for v in node]
    return node


DOC_EXAMPLES = [(page, i, block) for page in sorted((ROOT / "docs" / "commands").glob("*.md"))
                for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S))]


@pytest.mark.parametrize("page, index, block", DOC_EXAMPLES,
                         ids=[f"{p.stem}-{i}" for p, i, _ in DOC_EXAMPLES])
def test_every_yaml_example_of_a_command_page_uses_only_keys_and_values_that_command_takes(page, index, block):
    """A key misspelled or dropped from the config classes, or a value outside its choices, in a docs example
    fails here (partial examples are allowed: nothing is required)."""
    data = parse_yaml(block)
    assert isinstance(data, dict), f"{page.name} example {index} is not a mapping"
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in Draft7Validator(_without_required(schema_of(page.stem))).iter_errors(data)]
    assert not errors, f"{page.name} example {index}: {errors}"


def test_the_docs_examples_are_found():
    assert {p.stem for p, _, _ in DOC_EXAMPLES} >= {"compress", "finetune", "pretrain", "adapter", "prompt", "distill"}
