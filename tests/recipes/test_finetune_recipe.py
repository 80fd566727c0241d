"""Recipe tests: the real CLI on a 2-layer BERT built from a config, offline."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from llmkit.cli import app
from tests.conftest import write_yaml

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_finetune_writes_run_directory_and_learns(tmp_path, tiny_config):
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "log_history.jsonl", "env.json", "report.md", "loss.png",
                 "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (run / name).exists(), name
    assert any(p.name.startswith("checkpoint-") for p in (run / "checkpoints").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 0.1, losses
    assert metrics["eval_accuracy"] >= 0.9, metrics
    for key in ("eval_loss", "eval_f1", "eval_precision_negative", "eval_recall_positive", "train_runtime",
                "train_tokens_per_second", "trainable_params"):
        assert key in metrics, key
    model_config = json.loads((run / "model/config.json").read_text())
    assert model_config["id2label"] == {"0": "negative", "1": "positive"}
    assert "Confusion matrix" in (run / "report.md").read_text()
    # The saved config is re-runnable as is.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == 2e-3
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 1 and env["precision"] == "fp32"
