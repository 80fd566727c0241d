"""Smoke tests of a config in your own test suite (the example in docs/smoke.md, run here as written)."""

from pathlib import Path

import pytest

from llmkit.errors import UserError
from llmkit.testing import smoke_run, tiny_model

DATA = Path(__file__).resolve().parent.parent / "examples" / "sentiment"


def sentiment_config(model_dir: Path) -> dict:
    return {
        "model": {"name_or_path": str(model_dir)},
        "task": {"type": "sequence-classification"},
        "data": {"train_file": str(DATA / "train.csv"), "validation_file": str(DATA / "dev.csv")},
        "train": {"per_device_train_batch_size": 8, "learning_rate": 1e-4},
    }


def test_classifier_config_runs_end_to_end(tmp_path):
    # A 2-layer BERT-style encoder and a tokenizer, made offline and saved like a downloaded checkpoint.
    tiny_model("bert", task="base", path=tmp_path / "encoder")
    metrics = smoke_run(sentiment_config(tmp_path / "encoder"), output_dir=tmp_path / "run")
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_a_wrong_column_fails_before_any_gpu_hour(tmp_path):
    tiny_model("bert", task="base", path=tmp_path / "encoder")
    config = sentiment_config(tmp_path / "encoder")
    config["data"]["text_column"] = "review"  # the CSV's column is `text`
    with pytest.raises(UserError, match="'review' is not a column"):
        smoke_run(config, output_dir=tmp_path / "run")
