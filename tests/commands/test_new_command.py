"""Adding a command is one recipe module and one registry line: a throw-away command registered here gets the
shared options, the run-directory rules, config validation and smoke mode without any change to cli.py or
smoke.py."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from llmkit import cli, commands
from tests.conftest import write_yaml


@pytest.fixture
def toy_app():
    commands.register(commands.Command("toy", "tests.commands.toy_recipe", "ToyConfig", "toy",
                                       "Count the tokens of the training data."))
    try:
        yield cli.build_app()
    finally:
        del commands.COMMANDS["toy"]


@pytest.fixture
def toy_config(tmp_path, tokenizer_dir, sentiment_data):
    from transformers import AutoTokenizer, BertModel

    from tests.recipes.helpers import tiny_bert_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    BertModel(tiny_bert_config(tokenizer, labels=False)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    config = {"model": {"name_or_path": str(tmp_path / "bert")},
              "data": {"train_file": str(sentiment_data / "train.csv")}, "toy": {"factor": 2},
              "output_dir": str(tmp_path / "run")}
    return write_yaml(tmp_path / "toy.yaml", config)


def invoke(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_new_command_has_the_shared_options(toy_app):
    result = invoke(toy_app, "toy", "--help")
    assert result.exit_code == 0
    for option in ("--dry-run", "--output-dir", "--overwrite", "--smoke"):
        assert option in result.output
    assert "toy" in invoke(toy_app, "--help").output


def test_the_new_command_runs_in_its_own_run_directory(toy_app, toy_config, tmp_path):
    result = invoke(toy_app, "toy", toy_config)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["rows"] == 64 and metrics["tokens"] > 2 * 64  # factor 2, several tokens a row
    assert (tmp_path / "run" / ".llmkit-run").is_file()
    again = invoke(toy_app, "toy", toy_config)
    assert again.exit_code == 2 and "already exists and is not empty" in again.output
    assert invoke(toy_app, "toy", toy_config, "--overwrite").exit_code == 0


def test_the_new_command_validates_its_config(toy_app, toy_config):
    assert invoke(toy_app, "config", "validate", toy_config).exit_code == 0  # inferred from its section
    bad = invoke(toy_app, "toy", toy_config, "toy.factor=0", "--dry-run")
    assert bad.exit_code == 2 and "toy.factor: must be >= 1, got 0" in bad.output
    foreign = invoke(toy_app, "finetune", toy_config)
    assert foreign.exit_code == 2 and "`toy:` belongs to `llmkit toy`" in foreign.output


def test_the_new_command_has_smoke_mode(toy_app, toy_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(toy_app, "toy", toy_config, "--smoke")
    assert result.exit_code == 0, result.output
    assert "replaced by a tiny" in result.output
    run = tmp_path / "smoke" / "toy-toy"
    assert json.loads((run / "metrics.json").read_text())["rows"] == 64
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["smoke"] is True and saved["data"]["max_train_samples"] == 128
    assert saved["model"]["name_or_path"] != str(tmp_path / "bert")  # the tiny copy, built from the model's config
    assert json.loads((run / ".llmkit-run").read_text())["smoke"] is True
