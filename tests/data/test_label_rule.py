"""One rule for label values, in every command (data/classification.py LabelReading): a label equal to a class
name, compared as text, is that class; integers are positions in the class list only when no label is a class
name; mixed or impossible cases are refused showing both readings."""

from __future__ import annotations

import json

import pytest

from llmkit.data.classification import LabelReading
from tests.conftest import sentiment_rows, write_csv, write_yaml
from tests.recipes.helpers import invoke


@pytest.mark.parametrize(("names", "values", "expected"), [
    (["negative", "positive"], {0, 1}, {0: 0, 1: 1}),  # 0-based integers with descriptive names: positions
    (["1", "2", "3", "4"], {1, 2, 3, 4}, {1: 0, 2: 1, 3: 2, 4: 3}),  # 1-based: names, never positions
    (["2", "4", "7"], {2, 4, 7}, {2: 0, 4: 1, 7: 2}),  # non-contiguous
    (["0", "1"], {0, 1}, {0: 0, 1: 1}),  # names that are positions too: the same classes either way
    (["neg", "pos"], {"neg", "pos"}, {"neg": 0, "pos": 1}),
])
def test_a_label_is_a_class_name_before_it_is_a_position(names, values, expected):
    reading = LabelReading(names, values)
    assert not reading.outside
    assert {value: reading(value) for value in values} == expected


def test_mixed_labels_are_refused_with_both_readings():
    reading = LabelReading(["negative", "positive"], {0, "positive"})
    assert reading.outside == {0}
    assert "other labels (positive) are class names" in reading.index_note and "0 -> negative" in reading.index_note
    high = LabelReading(["negative", "positive"], {0, 1, 2})  # no name matches: positions, 2 is past the end
    assert high.outside == {2} and "positions in that list (0 to 1)" in high.index_note


ROWS = sentiment_rows(96, seed=11)
LAYOUTS = {  # how a dataset writes its 4 classes
    "zero-based": [0, 1, 2, 3],
    "one-based": [1, 2, 3, 4],
    "non-contiguous": [2, 4, 7, 9],
    "strings": ["world", "sports", "business", "science"],
}


def write_split(path, labels, rows):
    return write_csv(path, [{"text": r["text"], "label": labels[i % 4]} for i, r in enumerate(rows)])


def config_for(tmp_path, tiny_config, labels, **data) -> dict:
    config = {**tiny_config, "data": {"train_file": str(write_split(tmp_path / "train.csv", labels, ROWS[:64])),
                                      "validation_file": str(write_split(tmp_path / "dev.csv", labels, ROWS[64:])),
                                      "max_length": 32, **data},
              "train": {**tiny_config["train"], "max_steps": 4, "save_strategy": "no"}}
    return config


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_of_a_run_on_its_own_validation_file_reproduces_its_metrics(tmp_path, tiny_config, layout):
    config = config_for(tmp_path, tiny_config, LAYOUTS[layout])
    if layout == "zero-based":
        config["data"]["label_names"] = ["world", "sports", "business", "science"]
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", config))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    trained = json.loads((run / "metrics.json").read_text())
    evaluated = invoke("eval", run, "--data", config["data"]["validation_file"], "-o", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    for key in ("eval_accuracy", "eval_f1"):
        assert scores[key] == pytest.approx(trained[key], abs=1e-6), key
    names = json.loads((run / "model" / "config.json").read_text())["id2label"]
    expected = config["data"].get("label_names") or [str(v) for v in LAYOUTS[layout]]
    assert sorted(names.values()) == sorted(expected)


def test_a_one_based_run_teaches_a_student(tmp_path, tiny_config):
    config = config_for(tmp_path, tiny_config, LAYOUTS["one-based"])
    assert invoke("finetune", write_yaml(tmp_path / "cfg.yaml", config)).exit_code == 0
    distill = {"distill": {"teacher": str(tmp_path / "run"), "student": {"from_teacher": {"keep_layers": [0]}}},
               "data": config["data"], "train": {"max_steps": 2, "precision": "fp32", "save_strategy": "no"},
               "output_dir": str(tmp_path / "student")}
    result = invoke("distill", write_yaml(tmp_path / "distill.yaml", distill))
    assert result.exit_code == 0, result.output
    assert "eval_accuracy" in json.loads((tmp_path / "student" / "metrics.json").read_text())


@pytest.fixture
def masked_lm(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, BertForMaskedLM

    from tests.recipes.helpers import save_model_dir, tiny_bert_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return save_model_dir(tmp_path_factory, "mlm", BertForMaskedLM(tiny_bert_config(tokenizer, labels=False)),
                          tokenizer)


@pytest.mark.parametrize("label_names", [None, [1, 2, 3, 4]])
def test_prompt_takes_its_classes_from_the_verbalizer(tmp_path, masked_lm, label_names):
    """Zero-shot with only a validation file: the verbalizer's keys are the classes (or data.label_names given
    as integers, read as their text); 1-based labels match them by name."""
    dev = write_split(tmp_path / "dev.csv", LAYOUTS["one-based"], ROWS[64:])
    config = {"model": {"name_or_path": masked_lm},
              "data": {"validation_file": str(dev), "max_length": 32,
                       **({"label_names": label_names} if label_names else {})},
              "prompt": {"template": "{text} It was {mask}.",
                         "verbalizer": {1: ["great"], 2: ["awful"], 3: ["dull"], 4: ["lovely"]}},
              "train": {"precision": "fp32"}, "output_dir": str(tmp_path / "run")}
    result = invoke("prompt", write_yaml(tmp_path / "prompt.yaml", config))
    assert result.exit_code == 0, result.output
    assert "eval_accuracy" in json.loads((tmp_path / "run" / "metrics.json").read_text())
    predictions = (tmp_path / "run" / "predictions_validation.jsonl").read_text().splitlines()
    assert {json.loads(line)["label"] for line in predictions} == {"1", "2", "3", "4"}


def test_prompt_verbalizer_keys_follow_the_same_rule(tmp_path, masked_lm):
    dev = write_split(tmp_path / "dev.csv", LAYOUTS["one-based"], ROWS[64:])
    config = {"model": {"name_or_path": masked_lm}, "data": {"validation_file": str(dev), "max_length": 32},
              "prompt": {"template": "{text} It was {mask}.",
                         "verbalizer": {1: ["great"], "two": ["awful"], 3: ["dull"], 4: ["lovely"]}},
              "train": {"precision": "fp32"}, "output_dir": str(tmp_path / "run")}
    result = invoke("prompt", write_yaml(tmp_path / "prompt.yaml", config))
    assert result.exit_code == 2, result.output
    assert "has labels outside the label set: 2 (8 rows)" in result.output
    assert "The label set (from prompt.verbalizer's keys) is: 1, two, 3, 4" in result.output


def test_a_task_section_in_a_prompt_config_says_prompt_is_classification_only(tmp_path, masked_lm):
    config = {"model": {"name_or_path": masked_lm}, "data": {"validation_file": "dev.csv"},
              "prompt": {"template": "{text} It was {mask}.", "verbalizer": {"a": ["x"], "b": ["y"]}},
              "task": {"type": "sequence-classification"}}
    result = invoke("config", "validate", write_yaml(tmp_path / "prompt.yaml", config), "--command", "prompt")
    assert result.exit_code == 2
    assert "`task:` belongs to `llmkit finetune`, `llmkit adapter` or `llmkit distill`" in result.output
    assert "llmkit prompt does classification only" in result.output
