"""Exact resume through the real CLI: a run interrupted mid-epoch by a real SIGINT, then resumed with
`train.resume: auto`, ends with the same weights and the same per-step losses as an uninterrupted run
(optimizer, scheduler, RNG and data position restored) — for pretrain, finetune and adapter."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from llmkit.training import loop
from llmkit.training.callbacks import InterruptCallback
from tests.conftest import write_yaml
from tests.recipes.helpers import invoke, tiny_bert_config


def interrupt_at(monkeypatch, step: int) -> None:
    """Deliver a real SIGINT to this process when `step` ends; llmkit's own handler then saves and stops."""

    class SigintAtStep(InterruptCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next bytecode
            return super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(loop, "InterruptCallback", SigintAtStep)


def step_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def run_interrupted_and_resumed(monkeypatch, tmp_path, command: str, config: dict, steps: int, half: int):
    """One uninterrupted run of `steps` steps into full/, and one into parts/ stopped by SIGINT after `half`
    steps and resumed; returns both run directories."""
    full, parts = tmp_path / "full", tmp_path / "parts"
    result = invoke(command, write_yaml(tmp_path / "full.yaml", {**config, "output_dir": str(full)}))
    assert result.exit_code == 0, result.output
    cfg = write_yaml(tmp_path / "parts.yaml", {**config, "output_dir": str(parts)})
    with monkeypatch.context() as m:
        interrupt_at(m, half)
        stopped = invoke(command, cfg)
    assert stopped.exit_code == loop.EXIT_INTERRUPTED, stopped.output
    assert f"Interrupted by SIGINT at step {half}" in stopped.output
    assert sorted(p.name for p in (parts / "checkpoints").iterdir()) == [f"checkpoint-{half}"]
    resumed = invoke(command, cfg, "train.resume=auto")
    assert resumed.exit_code == 0, resumed.output
    assert f"checkpoint-{half}" in resumed.output
    records = [json.loads(line) for line in (full / "log_history.jsonl").read_text().splitlines()]
    assert not float(next(r["epoch"] for r in records if r["step"] == half)).is_integer()  # stopped mid-epoch
    expected = step_losses(full)
    assert sorted(expected) == list(range(1, steps + 1))
    got = step_losses(parts)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    return full, parts


def assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_finetune_resumes_mid_epoch_exactly(monkeypatch, tmp_path, tiny_config):
    # 64 rows, batch 4 x accumulation 2: 8 steps per epoch; stopped at 6, the resumed run crosses into epoch 2.
    tiny_config["train"].update(max_steps=12, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                logging_steps=1, save_strategy="no", eval_strategy="no", warmup_steps=2,
                                lr_scheduler_type="linear")
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "finetune", tiny_config, steps=12, half=6)
    assert_same_weights(weights(full / "model/model.safetensors"), weights(parts / "model/model.safetensors"))


def test_pretrain_resumes_mid_epoch_exactly(monkeypatch, tmp_path):
    from tests.recipes.test_pretrain_recipe import gpt_config, repetitive_text

    text = tmp_path / "text"
    text.mkdir()
    (text / "train.txt").write_text(repetitive_text(300, seed=1))
    (text / "valid.txt").write_text(repetitive_text(40, seed=2))
    config = gpt_config(tmp_path, text)  # GPT-2 with its default dropout 0.1
    config["train"].update(max_steps=10, logging_steps=1, lr_scheduler_type="cosine", warmup_steps=2)
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "pretrain", config, steps=10, half=5)
    assert_same_weights(weights(full / "model/model.safetensors"), weights(parts / "model/model.safetensors"))


@pytest.fixture
def bert_base(tmp_path, tokenizer_dir) -> str:
    """A 2-layer BERT masked LM saved like a downloaded checkpoint, as LoRA's base."""
    from transformers import AutoTokenizer, BertForMaskedLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertForMaskedLM(tiny_bert_config(tokenizer, labels=False))
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return str(tmp_path / "base")


def test_adapter_resumes_mid_epoch_exactly(monkeypatch, tmp_path, tiny_config, bert_base):
    config = {**tiny_config, "model": {"name_or_path": bert_base},
              "adapter": {"method": "lora", "name": "sentiment", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1}}
    del config["tokenizer"]
    config["train"] = {**tiny_config["train"], "max_steps": 12, "learning_rate": 1e-2, "logging_steps": 1,
                       "save_strategy": "no", "eval_strategy": "no"}
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "adapter", config, steps=12, half=6)
    saved = "adapter/sentiment/adapter_model.safetensors"
    assert_same_weights(weights(full / saved), weights(parts / saved))
