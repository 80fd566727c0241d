"""Token classification: CoNLL/jsonl loading, sub-token label alignment, and the finetune recipe end to end."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.data.token_classification import align_labels
from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE, write_yaml

runner = CliRunner()


def tagged_sentences(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """Sentences whose sentiment words are entities: POS (positive words) and NEG, in BIO tags."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(3):
            words += rng.sample(NEUTRAL, 2)
            tags += ["O", "O"]
            kind, pool = rng.choice([("POS", POSITIVE), ("NEG", NEGATIVE)])
            span = rng.sample(pool, rng.choice([1, 2]))
            words += span
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(span) - 1)
        out.append((words, tags))
    return out


def write_conll(path, sentences):
    lines = ["-DOCSTART- -X- O O", ""]
    for words, tags in sentences:
        lines += [f"{w} X _ {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines))
    return path


def write_jsonl(path, sentences):
    path.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in sentences))
    return path


@pytest.fixture
def ner_config(tmp_path, tiny_config):
    train = write_conll(tmp_path / "train.conll", tagged_sentences(48, seed=1))
    dev = write_jsonl(tmp_path / "dev.jsonl", tagged_sentences(16, seed=2))
    tiny_config["task"] = {"type": "token-classification"}
    tiny_config["data"] = {"train_file": str(train), "validation_file": str(dev), "max_length": 48}
    tiny_config["train"].update(num_train_epochs=10, learning_rate=3e-3, save_strategy="no")
    return tiny_config


def test_first_sub_token_of_each_word_carries_the_label():
    #            CLS  w0   w0   w1   SEP
    word_ids = [None, 0, 0, 1, None]
    assert align_labels(word_ids, [3, 5]) == [-100, 3, -100, 5, -100]


def test_token_classification_recipe_end_to_end(tmp_path, ner_config):
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "ner.yaml", ner_config))])
    assert result.exit_code == 0, result.output
    assert "5 tags (B-NEG, B-POS, I-NEG, I-POS, O)" in result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("eval_precision", "eval_recall", "eval_f1", "eval_accuracy", "eval_f1_POS", "eval_f1_NEG",
                "eval_number_POS"):
        assert key in metrics, key
    assert metrics["eval_f1"] > 0.5, metrics
    assert metrics["eval_number_POS"] + metrics["eval_number_NEG"] == 48  # 3 entities x 16 sentences
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] / 2
    assert "Per-entity scores (validation)" in (run / "report.md").read_text()
    config = json.loads((run / "model/config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"] and config["id2label"]["4"] == "O"
    # llmkit eval of the run directory (task and columns from the run) reproduces the entity scores.
    evaluated = runner.invoke(app, ["eval", str(run), "--data", str(tmp_path / "dev.jsonl"), "-o",
                                    str(tmp_path / "ev")])
    assert evaluated.exit_code == 0, evaluated.output
    record = json.loads((tmp_path / "ev/eval.json").read_text())
    assert record["task"] == "token-classification"
    for key in ("eval_f1", "eval_precision_POS", "eval_number_NEG"):
        assert record["metrics"][key] == pytest.approx(metrics[key], abs=1e-6), key


def test_words_and_tags_must_pair_up(tmp_path, ner_config):
    (tmp_path / "dev.jsonl").write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "ner.yaml", ner_config)), "--dry-run"])
    assert result.exit_code == 2 and "sentence 0 of the validation data has 2 words but 1 tags" in result.output


def test_unknown_tag_in_validation(tmp_path, ner_config):
    (tmp_path / "dev.jsonl").write_text(json.dumps({"tokens": ["great"], "tags": ["B-MISC"]}) + "\n")
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "ner.yaml", ner_config)), "--dry-run"])
    assert result.exit_code == 2 and "tag 'B-MISC', which is not in the tag set" in result.output


def test_conll_line_without_a_tag(tmp_path, ner_config):
    (tmp_path / "train.conll").write_text("great B-POS\nlonely\n")
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "ner.yaml", ner_config)), "--dry-run"])
    assert result.exit_code == 2 and "line 2 has a word but no tag" in result.output


def test_missing_tags_column_lists_the_real_ones(tmp_path, ner_config):
    (tmp_path / "dev.jsonl").write_text(json.dumps({"words": ["great"], "labels": ["B-POS"]}) + "\n")
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "ner.yaml", ner_config)), "--dry-run"])
    assert result.exit_code == 2 and "Its columns are: words, labels" in result.output
