"""Contextual calibration (`prompt.calibrate`) through the real CLI, on a constructed case checked against a hand
computation: the verbalizer's class scores are replaced by known ones (the model still runs), so the prior of the
content-free inputs and every calibrated prediction are known exactly.

The formula (Zhao et al. 2021): p_cf = the mean over the content-free inputs of softmax(class scores);
calibrated prediction = argmax_c (log softmax(scores)_c - log p_cf_c)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import write_yaml
from tests.recipes.helpers import invoke, save_model_dir

# Content-free rows (scored in this order): class probabilities [0.5, 0.5] and [0.1, 0.9], given as unnormalised
# log-scores (offsets -1 and +2), so p_cf must be the mean of their softmaxes: [0.3, 0.7]. (The softmax of the
# mean score would give [0.25, 0.75]; the mean of the raw scores is not a distribution.)
CONTENT_FREE = [[math.log(0.5) - 1.0, math.log(0.5) - 1.0], [math.log(0.1) + 2.0, math.log(0.9) + 2.0]]
PRIOR = [0.3, 0.7]
# Validation rows, by their true label: both favour "positive" before calibration (accuracy 0.5); dividing by
# the prior flips the negatives (0.4/0.3 > 0.6/0.7) and keeps the positives (0.25/0.3 < 0.75/0.7): accuracy 1.
BY_LABEL = {0: [math.log(0.4), math.log(0.6)], 1: [math.log(0.25), math.log(0.75)]}


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory, tokenizer_dir) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64))
    return save_model_dir(tmp_path_factory, "bert-mlm", model, tokenizer)


@pytest.fixture
def known_scores(monkeypatch):
    """The verbalizer's class scores, replaced after the model ran: content-free rows (label -100) get
    CONTENT_FREE in order, validation rows BY_LABEL of their label."""
    from llmkit.prompting import scoring

    real = scoring.class_scores

    def constructed(model, batch, plan):
        scores = real(model, batch, plan)  # the model still scores the batch
        labels = batch["labels"].tolist()
        if all(label == -100 for label in labels):
            assert len(labels) == len(CONTENT_FREE), labels  # one batch, in the order of calibration_inputs
            rows = CONTENT_FREE
        else:
            rows = [BY_LABEL[label] for label in labels]
        return torch.tensor(rows, dtype=scores.dtype, device=scores.device)

    monkeypatch.setattr(scoring, "class_scores", constructed)


def test_calibration_divides_by_the_content_free_prior_and_flips_predictions(tmp_path, sentiment_data, bert_mlm,
                                                                              known_scores):
    config = {
        "model": {"name_or_path": bert_mlm},
        "data": {"validation_file": str(sentiment_data / "dev.csv"), "label_names": ["negative", "positive"],
                 "max_length": 32},
        "prompt": {"template": "{text} It was {mask}.", "verbalizer": {"negative": ["terrible"],
                                                                        "positive": ["great"]},
                   "calibrate": True, "calibration_inputs": ["N/A", "nothing"]},
        "train": {"per_device_eval_batch_size": 16, "precision": "fp32", "disable_tqdm": True, "seed": 0},
        "output_dir": str(tmp_path / "run"),
    }
    result = invoke("prompt", write_yaml(tmp_path / "prompt.yaml", config))
    assert result.exit_code == 0, result.output
    run = Path(config["output_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    # the prior: the mean of the content-free softmaxes, by hand
    assert metrics["calibration_probabilities"] == pytest.approx({"negative": PRIOR[0], "positive": PRIOR[1]},
                                                                 abs=1e-6)
    rows = [json.loads(line) for line in (run / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and {r["label"] for r in rows} == {"negative", "positive"}
    names = ["negative", "positive"]
    for row in rows:
        scores = [row["scores"][n] for n in names]
        log_z = math.log(sum(math.exp(s) for s in scores))
        by_hand = max(range(2), key=lambda c: scores[c] - log_z - math.log(PRIOR[c]))
        assert row["calibrated_prediction"] == names[by_hand], row
        assert row["prediction"] == "positive"  # uncalibrated: the prior's class everywhere
        assert row["calibrated_prediction"] == row["label"]  # calibrated: the negatives flipped
    assert metrics["eval_accuracy"] == pytest.approx(0.5)
    assert metrics["eval_calibrated_accuracy"] == pytest.approx(1.0)
