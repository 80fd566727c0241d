"""finetune task.type: causal-lm (SFT) through the real CLI on a 2-layer Llama built from a config."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from llmkit.cli import app
from tests.conftest import write_yaml

runner = CliRunner()
ANSWERS = {"good": "great", "bad": "awful"}


def qa_rows(n: int) -> list[dict]:
    return [{"instruction": f"say a {word} word", "input": "", "output": f"{ANSWERS[word]} and wonderful"}
            for word in ("good", "bad") * (n // 2)]


@pytest.fixture
def sft_config(tmp_path, chat_tokenizer_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text(json.dumps(qa_rows(32)))
    (data / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows(8)))
    return {
        "model": {"from_config": {"family": "llama", "num_layers": 2, "hidden_size": 32, "num_heads": 2,
                                  "intermediate_size": 64, "max_position_embeddings": 128}},
        "tokenizer": {"name_or_path": chat_tokenizer_dir},
        "task": {"type": "causal-lm", "sample_max_new_tokens": 6},
        "data": {"train_file": str(data / "train.json"), "validation_file": str(data / "dev.jsonl"),
                 "max_length": 64},
        "train": {"num_train_epochs": 6, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 2,
                  "seed": 0, "precision": "fp32", "save_strategy": "no", "disable_tqdm": True},
        "output_dir": str(tmp_path / "run"),
    }


@pytest.mark.parametrize("packing", [True, False])
def test_sft_trains_saves_template_and_samples(tmp_path, sft_config, packing):
    sft_config["task"]["packing"] = packing
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "sft.yaml", sft_config))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 1.0, losses
    assert metrics["eval_perplexity"] == pytest.approx(__import__("math").exp(metrics["eval_loss"]), rel=1e-6)
    if packing:
        assert metrics["train_padding_fraction"] == 0.0
    else:
        assert metrics["train_padding_fraction"] > 0.0
    saved = json.loads((run / "model/tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (run / "model/chat_template.jinja").read_text()
    assert "<|im_start|>" in template  # the training chat template travels with the model
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and samples[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert samples[0]["reference"] == "great and wonderful"
    assert samples[0]["output_before_training"] is not None


def test_packing_keeps_every_token_once():
    from transformers import DataCollatorWithFlattening

    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    batch = DataCollatorWithFlattening()(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]  # attention restarts per example
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # no loss across the boundary


def test_chat_data_with_a_tokenizer_without_template(tmp_path, sft_config, tokenizer_dir):
    msgs = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "great"}]}] * 4
    (tmp_path / "data/chat.jsonl").write_text("".join(json.dumps(m) + "\n" for m in msgs))
    sft_config["tokenizer"]["name_or_path"] = tokenizer_dir  # WordPiece, no chat template
    sft_config["data"] = {"train_file": str(tmp_path / "data/chat.jsonl"), "max_length": 64}
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "sft.yaml", sft_config)), "--dry-run"])
    assert result.exit_code == 2 and "tokenizer.chat_template" in result.output


def test_missing_instruction_columns(tmp_path, sft_config):
    (tmp_path / "data/odd.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    sft_config["data"] = {"train_file": str(tmp_path / "data/odd.jsonl"), "max_length": 64}
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "sft.yaml", sft_config)), "--dry-run"])
    assert result.exit_code == 2 and "question, answer" in result.output


def test_long_examples_truncated_with_a_count_or_refused(tmp_path, sft_config):
    sft_config["data"]["max_length"] = 27
    cfg = write_yaml(tmp_path / "sft.yaml", sft_config)
    truncated = runner.invoke(app, ["finetune", str(cfg), "--dry-run"])
    assert truncated.exit_code == 0, truncated.output
    count = re.search(r"format alpaca, (\d+) example\(s\) truncated to data.max_length", truncated.output)
    assert count and int(count.group(1)) > 0
    refused = runner.invoke(app, ["finetune", str(cfg), "task.too_long=error", "--dry-run"])
    assert refused.exit_code == 2 and "longer than 27 tokens and task.too_long is error" in refused.output


def test_a_file_that_is_not_gguf(tmp_path, sft_config):
    pytest.importorskip("gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a gguf file")
    sft_config["model"] = {"gguf_file": str(fake)}
    sft_config["tokenizer"] = {}
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "sft.yaml", sft_config)), "--dry-run"])
    assert result.exit_code == 2 and "model.gguf_file" in result.output and "not a GGUF file" in result.output


def test_column_map_turns_question_answer_data_into_prompt_response(tmp_path, sft_config):
    rows = [{"question": "say a good word", "answer": "great"}] * 8
    (tmp_path / "data/qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft_config["data"] = {"train_file": str(tmp_path / "data/qa.jsonl"), "max_length": 64,
                          "column_map": {"question": "prompt", "answer": "response"}}
    cfg = write_yaml(tmp_path / "sft.yaml", sft_config)
    result = runner.invoke(app, ["finetune", str(cfg), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "format prompt_response" in result.output
    bad = runner.invoke(app, ["finetune", str(cfg), "data.column_map={query: prompt}", "--dry-run"])
    assert bad.exit_code == 2 and "data.column_map: the train data has no column 'query'" in bad.output


def test_plain_template_is_saved_when_the_tokenizer_has_none(tmp_path, sft_config):
    from tests.conftest import build_chat_tokenizer

    build_chat_tokenizer(None).save_pretrained(tmp_path / "no-template")  # has EOS, no chat template
    sft_config["tokenizer"]["name_or_path"] = str(tmp_path / "no-template")  # alpaca data
    sft_config["train"].update(num_train_epochs=1)
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "sft.yaml", sft_config))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    saved = json.loads((run / "model/tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (run / "model/chat_template.jinja").read_text()
    assert "### Instruction:" in template and "### Response:" in template
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"].endswith("### Response:\n")


def test_raw_text_with_sample_prompts_and_no_chat_template(tmp_path, sft_config):
    """Continued pretraining on plain text: the sample prompts are continued as plain text (there is no chat
    template to render them with)."""
    from tests.conftest import build_chat_tokenizer

    build_chat_tokenizer(None).save_pretrained(tmp_path / "no-template")
    (tmp_path / "data/train.txt").write_text("the film was great and wonderful\n" * 40)
    sft_config["tokenizer"]["name_or_path"] = str(tmp_path / "no-template")
    sft_config["data"] = {"train_file": str(tmp_path / "data/train.txt"), "max_length": 32}
    sft_config["task"]["sample_prompts"] = ["the film was"]
    sft_config["train"].update(num_train_epochs=1, eval_strategy="no")
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / "sft.yaml", sft_config))])
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in (tmp_path / "run/samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == ["the film was"] and isinstance(samples[0]["output"], str)
