"""Hostile and accidental bad configs: each is refused with one clear message, fast, never with a traceback.

Duplicated keys, runaway aliases, huge values, non-finite numbers, YAML's boolean words, files that are not
regular files, UTF-16 text.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import llmkit.config.loader as loader
from llmkit.config import apply_overrides, load_config, read_yaml
from llmkit.config.schema import build
from llmkit.errors import ConfigError, UserError, not_utf8_message, shown
from llmkit.recipes.finetune import FinetuneConfig
from tests.conftest import write_yaml
from tests.recipes.helpers import invoke

FOREIGN = {"prompt": "`llmkit prompt`", "distill": "`llmkit distill`", "pretrain": "`llmkit pretrain`",
           "adapter": "`llmkit adapter`", "eval": "`llmkit eval`", "task": "`llmkit finetune`"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _with_train_value(tmp_path: Path, config: dict, key: str, literal: str) -> Path:
    """The config as YAML with `train.KEY: LITERAL` written as is (e.g. `.inf`, which no Python value dumps as)."""
    config["train"][key] = "@@"
    return _write(tmp_path / "cfg.yaml", yaml.safe_dump(config, sort_keys=False).replace("'@@'", literal))


def _refused(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


def _cli(*args) -> str:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


# ---------------------------------------------------------------- duplicate keys

def test_a_key_given_twice_in_a_section_is_refused(tmp_path):
    path = _write(tmp_path / "c.yaml", "train:\n  max_steps: 5\n  seed: 1\n  max_steps: 10\n")
    text = _refused(read_yaml, path)
    assert f"{path}, line 4: the key train.max_steps appears twice (lines 2 and 4)" in text
    assert "Keep one of them." in text


def test_a_section_given_twice_is_refused_with_merge_advice(tmp_path):
    path = _write(tmp_path / "c.yaml", "train:\n  seed: 1\nmodel: {}\ntrain:\n  max_steps: 3\n")
    text = _refused(read_yaml, path)
    assert "the key train appears twice (lines 1 and 4)" in text
    assert "merge the two into one `train:` block" in text


def test_duplicates_are_found_at_any_depth_and_inside_lists(tmp_path):
    deep = _write(tmp_path / "deep.yaml", "model:\n  from_config:\n    num_layers: 2\n    num_layers: 4\n")
    assert "the key model.from_config.num_layers appears twice (lines 3 and 4)" in _refused(read_yaml, deep)
    listed = _write(tmp_path / "list.yaml", "data:\n  files:\n    - {path: a, path: b}\n")
    assert "the key data.files[0].path appears twice (line 3)" in _refused(read_yaml, listed)
    same = _refused(read_yaml, _write(tmp_path / "null.yaml", "null: 1\n~: 2\n"))
    assert "the key ~ appears twice (lines 1 and 2, written null and ~, which YAML reads as one key)" in same


def test_merge_keys_are_not_duplicates(tmp_path):
    path = _write(tmp_path / "c.yaml", "base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n")
    assert read_yaml(path) == {"base": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}


def test_python_tags_stay_refused(tmp_path):
    path = _write(tmp_path / "c.yaml", "train:\n  seed: !!python/object/apply:os.system [echo hi]\n")
    text = _refused(read_yaml, path)
    assert "line 2: the YAML tag !!python/object/apply:os.system is not allowed" in text
    assert "nothing was run" in text


def test_overrides_keep_last_wins_but_use_the_same_loader():
    assert apply_overrides({}, ["train.seed=1", "train.seed=2"]) == {"train": {"seed": 2}}
    with pytest.raises(ConfigError) as exc:
        apply_overrides({}, ["train.x={a: 1, a: 2}"])
    assert "train.x: the key a appears twice (line 1)" in str(exc.value)
    with pytest.raises(ConfigError, match="is not allowed"):
        apply_overrides({}, ["train.x=!!python/object/apply:os.system [ls]"])
    with pytest.raises(ConfigError, match="nothing empty between the dots"):
        apply_overrides({}, ["train..seed=1"])


def test_duplicate_key_through_the_cli(tmp_path, tiny_config):
    tiny_config["train"]["max_steps"] = 5
    text = yaml.safe_dump(tiny_config, sort_keys=False).replace("  max_steps: 5\n", "  max_steps: 5\n  max_steps: 9\n")
    output = _cli("finetune", _write(tmp_path / "c.yaml", text), "--dry-run")
    assert "the key train.max_steps appears twice" in output


# ---------------------------------------------------------------- bounded work

BILLION_LAUGHS = 'lol: &lol "lol"\n' + "".join(
    f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}' if i > 1 else '*lol'] * 10)}]\n" for i in range(1, 10))


def test_billion_laughs_fails_fast(tmp_path):
    """Run in a child with a memory cap and a timeout, so a regression fails here instead of hanging the suite."""
    path = _write(tmp_path / "laughs.yaml", BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 1000
    code = ("import resource, sys, time\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from llmkit.config.loader import read_yaml\n"
            "from llmkit.errors import UserError\n"
            "start = time.perf_counter()\n"
            "try:\n"
            "    read_yaml(sys.argv[1])\n"
            "except UserError as e:\n"
            "    print(f'{time.perf_counter() - start:.3f}', e)\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                          cwd=root)
    assert done.returncode == 0, done.stderr
    seconds, message = done.stdout.split(" ", 1)
    assert float(seconds) < 5
    assert str(path) in message and "aliases expand too far" in message and "100,000 values" in message


def test_alias_cap_applies_to_overrides():
    with pytest.raises(ConfigError, match="train.x: aliases expand too far"):
        apply_overrides({}, ["train.x={" + ", ".join(BILLION_LAUGHS.splitlines()) + "}"])


def test_a_document_with_too_many_plain_values_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "MAX_YAML_VALUES", 50)
    path = _write(tmp_path / "c.yaml", "x: [" + ", ".join(["0"] * 60) + "]\n")
    text = _refused(read_yaml, path)
    assert "the document holds more than 50 values" in text and "aliases" not in text


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    text = _refused(read_yaml, _write(tmp_path / "c.yaml", "a: &x [1, *x]\n"))
    assert "line 1: the alias *x is inside the value its anchor &x names" in text


def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path):
    path = _write(tmp_path / "c.yaml", "a: " + "[" * 10_000 + "]" * 10_000 + "\n")
    assert "nested more than 100 levels deep" in _refused(read_yaml, path)


def test_a_file_too_large_to_be_a_config_is_not_read(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as fh:
        fh.truncate(loader.MAX_CONFIG_BYTES + 1)  # sparse: nothing written, and it would be a syntax error
    text = _refused(read_yaml, path)
    assert f"{path} is 10.0 MB, too large to be a config (the limit is 10 MB)" in text


def test_scalars_yaml_cannot_build_name_their_line(tmp_path):
    big = _refused(read_yaml, _write(tmp_path / "int.yaml", "seed: 1\nx: 1" + "0" * 5000 + "\n"))
    assert "line 2:" in big and "an integer of 5,001 digits" in big and len(big) < 500
    date = _refused(read_yaml, _write(tmp_path / "date.yaml", "x: 2024-13-45\n"))
    assert "line 1: '2024-13-45' cannot be read as a timestamp (month must be in 1..12)" in date


def test_a_list_as_a_key_is_refused(tmp_path):
    top = _refused(read_yaml, _write(tmp_path / "top.yaml", "? [a, b]\n: 1\n"))
    assert "line 1: a key of the top level is a list" in top
    section = _refused(read_yaml, _write(tmp_path / "sec.yaml", "train:\n  {a: 1}: 2\n"))
    assert "line 2: a key of train is a mapping" in section


# ---------------------------------------------------------------- values echoed in messages are cut

def test_shown_cuts_a_long_value_and_says_how_long():
    assert shown("abc") == "'abc'" and shown([1, 2]) == "[1, 2]"
    text = shown("x" * 10_000_000)
    assert text.endswith("... (10,000,000 characters)") and len(text) < 250
    many = shown(list(range(1_000_000)))
    assert many.startswith("[0, 1, 2") and many.endswith("... (1,000,000 items)") and len(many) < 250
    itself: list = []
    itself.append(itself)
    assert len(shown(itself)) < 250


def test_a_huge_value_gives_a_short_error(tiny_config):
    tiny_config["data"]["label_names"] = "x" * 10_000_000
    tiny_config["train"]["label_names"] = list(range(1_000_000))
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    text = str(exc.value)
    assert "data.label_names: expected a list of str or int or null, got 'xxx" in text
    assert "... (10,000,000 characters)" in text and "... (1,000,000 items)" in text
    assert len(text) < 1500


def test_a_config_error_lists_the_first_50_problems(tiny_config):
    tiny_config.update({f"key{i}": i for i in range(100_000)})
    start = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    assert time.perf_counter() - start < 10
    text = str(exc.value)
    assert "(100,000 problems)" in text and "key49: unknown key" in text and "key50:" not in text
    assert text.endswith("... and 99,950 more.")


# ---------------------------------------------------------------- numbers are finite and in range

@pytest.mark.parametrize("key, literal, shown_as", [
    ("num_train_epochs", ".inf", "inf"),
    ("num_train_epochs", "1e309", "'1e309'"),
    ("learning_rate", "-.inf", "-inf"),
    ("num_train_epochs", "1" + "0" * 400, "1000"),
])
def test_float_settings_refuse_what_is_not_finite(tmp_path, tiny_config, key, literal, shown_as):
    path = _with_train_value(tmp_path, tiny_config, key, literal)
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, path)
    assert f"train.{key}: {shown_as}" in str(exc.value) and "is not a finite number" in str(exc.value)


def test_int_settings_refuse_what_int64_cannot_hold(tmp_path, tiny_config):
    path = _with_train_value(tmp_path, tiny_config, "max_steps", "100000000000000000000000000000")
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, path)
    assert ("train.max_steps: 100000000000000000000000000000 is too large: an int setting holds at most "
            "9,223,372,036,854,775,807") in str(exc.value)
    tiny_config["model"]["from_config"]["num_layers"] = 1e30  # a float that is a whole number, too
    with pytest.raises(ConfigError, match="model.from_config.num_layers: 1000000000000000019884624838656 is too large"):
        load_config(FinetuneConfig, None, data=tiny_config)


def test_the_reason_survives_optional_and_union_types():
    @dataclasses.dataclass
    class Section:
        rate: float | None = None
        steps: int | str = 1
        scale: int | float = 1

    _, issues = build(Section, {"rate": float("inf"), "steps": 10**30, "scale": 1e30})
    assert [str(i) for i in issues] == [
        "rate: inf is not a finite number (a float holds up to about 1.8e308); give a finite value.",
        "steps: 1000000000000000000000000000000 is too large: an int setting holds at most 9,223,372,036,854,775,807 "
        "either way (a 64-bit integer)."]  # scale: 1e30 is a fine float


def test_nan_is_still_a_wrong_type(tiny_config):
    tiny_config["train"]["learning_rate"] = float("nan")
    with pytest.raises(ConfigError, match="train.learning_rate: expected float, got nan"):
        load_config(FinetuneConfig, None, data=tiny_config)


def test_infinite_epochs_through_the_cli(tmp_path, tiny_config):
    output = _cli("finetune", _with_train_value(tmp_path, tiny_config, "num_train_epochs", "1e309"), "--dry-run")
    assert "train.num_train_epochs: '1e309' is not a finite number" in output


# ---------------------------------------------------------------- keys in the wrong place

def test_a_top_level_key_of_a_section_says_where_to_nest_it(tiny_config):
    tiny_config["learning_rate"] = 0.1
    tiny_config["data"]["seed"] = 3  # inside a section: the cross-section hint stays
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    text = str(exc.value)
    assert "learning_rate: unknown key. Write it nested under `train:` (as train.learning_rate)." in text
    assert "data.seed: unknown key. Did you mean 'train.seed'? (it belongs to another section)" in text


def test_a_section_of_another_command_names_that_command(tiny_config):
    load_config(FinetuneConfig, None, data=tiny_config, foreign_sections=FOREIGN)  # its own task: is fine
    tiny_config.update(prompt={"template": "x"}, distill={}, prompts=1)
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config, foreign_sections=FOREIGN)
    text = str(exc.value)
    assert "prompt: `prompt:` belongs to `llmkit prompt`, not this command; remove it or run that command." in text
    assert "distill: `distill:` belongs to `llmkit distill`" in text
    assert "prompts: unknown key" in text


def test_keys_that_are_not_names(tmp_path, tiny_config):
    path = write_yaml(tmp_path / "c.yaml", tiny_config)
    path.write_text(path.read_text() + "2: x\n~: y\n'': z\non: w\n")
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, path)
    text = str(exc.value)
    assert "  - 2: unknown key: int 2 is not a setting name. Write `name: value`" in text
    assert "  - null: unknown key: null (an empty key) is not a setting name" in text
    assert "  - '': unknown key: '' (an empty key) is not a setting name" in text
    assert "  - True: unknown key: bool True is not a setting name" in text and "(e.g. 'on':)" in text


# ---------------------------------------------------------------- YAML's boolean words

@pytest.mark.parametrize("words", ["[yes, no]", "[on, off]"])
def test_boolean_words_in_a_list_of_strings(tmp_path, tiny_config, words):
    tiny_config["data"]["label_names"] = "@@"
    path = _write(tmp_path / "c.yaml", yaml.safe_dump(tiny_config, sort_keys=False).replace("'@@'", words))
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, path)
    assert ("data.label_names: expected a list of str or int or null, got [True, False]: YAML reads unquoted "
            "yes/no/on/off/true/false as booleans; quote them as you wrote them, e.g. ['yes', 'no'].") in str(exc.value)


def test_a_boolean_word_where_a_string_belongs(tiny_config):
    with pytest.raises(ConfigError, match="data.text_column: expected str, got True: YAML reads unquoted"):
        load_config(FinetuneConfig, None, ["data.text_column=yes"], data=tiny_config)


# ---------------------------------------------------------------- files that are not regular files

def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    messages = []
    reader = threading.Thread(target=lambda: messages.append(_refused(read_yaml, fifo)), daemon=True)
    reader.start()
    reader.join(timeout=20)  # an open() of the FIFO would block forever: fail instead of hanging
    assert not reader.is_alive(), "read_yaml blocked on a FIFO"
    assert f"{fifo} is not a regular file (it is a FIFO (named pipe)); give the path of a YAML config file." in \
        messages[0]


def test_a_device_is_not_a_config():
    assert "/dev/null is not a regular file (it is a character device" in _refused(read_yaml, "/dev/null")


def test_a_symlink_loop_is_not_a_missing_file(tmp_path):
    os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
    os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
    text = _refused(read_yaml, tmp_path / "a.yaml")
    assert f"{tmp_path / 'a.yaml'} is not a regular file (it is a symlink loop" in text


def test_missing_files_and_dangling_links_are_not_found(tmp_path):
    assert "Config file not found" in _refused(read_yaml, tmp_path / "nope.yaml")
    os.symlink(tmp_path / "gone.yaml", tmp_path / "link.yaml")
    assert "Config file not found" in _refused(read_yaml, tmp_path / "link.yaml")


# ---------------------------------------------------------------- encodings

@pytest.mark.parametrize("encoding, mark, name", [("utf-16", b"", "UTF-16"), ("utf-16-be", b"\xfe\xff", "UTF-16"),
                                                  ("utf-32", b"", "UTF-32")])
def test_utf16_and_utf32_files_are_named(tmp_path, encoding, mark, name):
    """Python's utf-16 and utf-32 codecs write the byte-order mark themselves; utf-16-be does not."""
    path = tmp_path / "c.yaml"
    path.write_bytes(mark + "model: {}\n".encode(encoding))
    message = _refused(read_yaml, path)
    assert message == (f"{path} is {name} (it starts with a byte-order mark); save it as UTF-8, e.g. iconv -f "
                       f"{name.lower()} -t utf-8.")
    data = tmp_path / "train.csv"  # the same message serves data files
    data.write_bytes("text,label\n".encode("utf-16"))
    assert "is UTF-16 (it starts with a byte-order mark)" in not_utf8_message(data)


def test_a_utf8_byte_order_mark_is_fine(tmp_path, tiny_config):
    path = write_yaml(tmp_path / "c.yaml", tiny_config)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_config(FinetuneConfig, path).train.learning_rate == 2e-3
    data = tmp_path / "train.csv"
    data.write_bytes(b"\xef\xbb\xbftext,label\n")
    assert not_utf8_message(data) is None


def test_utf16_config_through_the_cli(tmp_path, tiny_config):
    path = tmp_path / "c.yaml"
    path.write_bytes(yaml.safe_dump(tiny_config).encode("utf-16"))
    assert "is UTF-16 (it starts with a byte-order mark); save it as UTF-8" in _cli("finetune", path, "--dry-run")


def test_build_of_a_mapping_with_100000_keys_is_quick():
    """Unknown keys past the first 50 skip the fuzzy 'did you mean', which would cost minutes in train:."""
    from llmkit.config.sections import TrainConfig

    start = time.perf_counter()
    _, issues = build(TrainConfig, {f"k{i}": i for i in range(100_000)}, "train")
    assert len(issues) == 100_000 and time.perf_counter() - start < 5  # 15 s with every suggestion
