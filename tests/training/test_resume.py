"""Exact resume through the real CLI: a run interrupted mid-epoch by a real SIGINT, then resumed with
`train.resume: auto`, ends with the same weights and the same per-step losses as an uninterrupted run
(optimizer, scheduler, RNG and data position restored) — for pretrain, finetune, adapter, distill and prompt
(few-shot and a soft prompt), and for the interrupted size of a pretrain sweep."""

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


def interrupt_at(monkeypatch, step: int, where: str = "") -> None:
    """Deliver a real SIGINT to this process when `step` ends (in a trainer whose checkpoints folder's path holds
    `where`); llmkit's own handler then saves and stops."""

    class SigintAtStep(InterruptCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step and where in args.output_dir:
                os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next bytecode
            return super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(loop, "InterruptCallback", SigintAtStep)


def step_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def run_interrupted_and_resumed(monkeypatch, tmp_path, command: str, config: dict, steps: int, half: int,
                                sub: str = ""):
    """One uninterrupted run of `steps` steps into full/, and one into parts/ stopped by SIGINT after `half`
    steps and resumed; returns both training directories (`sub` inside each run directory: a prompt seed's
    folder)."""
    full, parts = tmp_path / "full", tmp_path / "parts"
    result = invoke(command, write_yaml(tmp_path / "full.yaml", {**config, "output_dir": str(full)}))
    assert result.exit_code == 0, result.output
    cfg = write_yaml(tmp_path / "parts.yaml", {**config, "output_dir": str(parts)})
    with monkeypatch.context() as m:
        interrupt_at(m, half)
        stopped = invoke(command, cfg)
    full, top, parts = full / sub, parts, parts / sub
    assert stopped.exit_code == loop.EXIT_INTERRUPTED, stopped.output
    assert f"Interrupted by SIGINT at step {half}" in stopped.output
    assert sorted(p.name for p in (parts / "checkpoints").iterdir()) == [f"checkpoint-{half}"], stopped.output
    resumed = resume_as_told(monkeypatch, stopped.output, command, top, list(range(half + 1, steps + 1)))
    assert f"resuming from {parts / 'checkpoints' / f'checkpoint-{half}'}" in resumed.output
    records = [json.loads(line) for line in (full / "log_history.jsonl").read_text().splitlines()]
    assert not float(next(r["epoch"] for r in records if r["step"] == half)).is_integer()  # stopped mid-epoch
    expected = step_losses(full)
    assert sorted(expected) == list(range(1, steps + 1))
    got = step_losses(parts)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    return full, parts


def resume_as_told(monkeypatch, output: str, command: str, run_dir: Path, steps: list[int]):
    """Run the command the interrupted run printed (`Continue with: llmkit ...`): it resumes the whole run (its
    config.yaml, its directory), also when the run trains in member folders (prompt seeds, sweep sizes), and
    trains only `steps` (the ones after the checkpoint: a run started over would give the same losses)."""
    told = output.split("Continue with: ", 1)[1].splitlines()[0].split()
    assert told == ["llmkit", command, str(run_dir / "config.yaml"), "train.resume=auto", "--output-dir",
                    str(run_dir)], told
    trained = []

    class CountSteps(InterruptCallback):
        def on_step_end(self, args, state, control, **kwargs):
            trained.append(state.global_step)
            return super().on_step_end(args, state, control, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, "InterruptCallback", CountSteps)
        resumed = invoke(*told[1:])
    assert resumed.exit_code == 0, resumed.output
    assert trained == steps
    return resumed


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


@pytest.fixture
def bert_classifier(tmp_path, tokenizer_dir) -> str:
    """A 2-layer BERT sentiment classifier saved like a downloaded checkpoint, as distill's teacher."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    BertForSequenceClassification(tiny_bert_config(tokenizer)).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    return str(tmp_path / "teacher")


def test_distill_resumes_mid_epoch_exactly(monkeypatch, tmp_path, tiny_config, bert_classifier):
    """The teacher runs beside the student (no cache); the student keeps dropout, so its RNG is restored too."""
    config = {k: v for k, v in tiny_config.items() if k not in ("model", "tokenizer")}
    config["distill"] = {"teacher": bert_classifier, "student": {"from_teacher": {"keep_layers": [0]}},
                         "alpha": 0.5, "temperature": 2.0}
    config["train"] = {**tiny_config["train"], "max_steps": 8, "logging_steps": 1, "save_strategy": "no",
                       "eval_strategy": "no", "lr_scheduler_type": "linear"}
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "distill", config, steps=8, half=5)
    assert_same_weights(weights(full / "model/model.safetensors"), weights(parts / "model/model.safetensors"))
    for run in (full, parts):  # every step's KD and CE terms were logged too, the same after the resume
        assert all("loss_kd" in r for r in map(json.loads, (run / "log_history.jsonl").read_text().splitlines())
                   if "loss" in r)


def prompt_config(tiny_config, bert_base, mode: str) -> dict:
    """prompt on the saved BERT masked LM: 8 examples per class, batch 4 (4 steps an epoch), 10 steps."""
    return {"model": {"name_or_path": bert_base},
            "data": {**tiny_config["data"], "label_names": ["negative", "positive"]},
            "prompt": {"mode": mode, "template": "{text} It was {mask} .", "shots_per_class": 8, "seeds": [3],
                       "verbalizer": {"negative": ["awful"], "positive": ["great"]}},
            "train": {**tiny_config["train"], "max_steps": 10, "per_device_train_batch_size": 4, "logging_steps": 1,
                      "learning_rate": 1e-2, "save_strategy": "no", "eval_strategy": "no"}}


def test_prompt_few_shot_resumes_mid_epoch_exactly(monkeypatch, tmp_path, tiny_config, bert_base):
    config = prompt_config(tiny_config, bert_base, "few-shot")
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "prompt", config, steps=10, half=6,
                                              sub="seed-3")
    assert_same_weights(weights(full / "model/model.safetensors"), weights(parts / "model/model.safetensors"))
    scored = [json.loads((run / "metrics.json").read_text())["per_seed"]["3"]["eval_accuracy"]
              for run in (full.parent, parts.parent)]
    assert scored[0] == scored[1]


def test_prompt_soft_prompt_resumes_mid_epoch_exactly(monkeypatch, tmp_path, tiny_config, bert_base):
    config = {**prompt_config(tiny_config, bert_base, "soft-prompt"),
              "adapter": {"method": "prompt_tuning", "num_virtual_tokens": 4}}
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "prompt", config, steps=10, half=6,
                                              sub="seed-3")
    (a,), (b,) = (sorted((run / "adapter").rglob("adapter_model.safetensors")) for run in (full, parts))
    assert_same_weights(weights(a), weights(b))


def test_an_interrupted_sweep_resumes_its_member_and_keeps_the_finished_ones(monkeypatch, tmp_path):
    """A 2-size pretrain sweep stopped by SIGINT mid-way through its second size: `train.resume: auto` keeps the
    first size as it was (not retrained), resumes the second from its checkpoint, and ends as the uninterrupted
    sweep does (same losses, weights and fit)."""
    from tests.recipes.test_pretrain_recipe import gpt_config, repetitive_text

    text = tmp_path / "text"
    text.mkdir()
    (text / "train.txt").write_text(repetitive_text(200, seed=1))
    (text / "valid.txt").write_text(repetitive_text(30, seed=2))
    config = gpt_config(tmp_path, text, sweep=[{"hidden_size": 16, "num_heads": 2, "name": "small"},
                                               {"hidden_size": 32, "name": "large"}])
    config["train"].update(max_steps=8, logging_steps=1, lr_scheduler_type="linear")
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert invoke("pretrain", write_yaml(tmp_path / "full.yaml", {**config, "output_dir": str(full)})).exit_code == 0
    cfg = write_yaml(tmp_path / "parts.yaml", {**config, "output_dir": str(parts)})
    with monkeypatch.context() as m:
        interrupt_at(m, 5, where="large")
        stopped = invoke("pretrain", cfg)
    assert stopped.exit_code == loop.EXIT_INTERRUPTED, stopped.output
    assert "Interrupted by SIGINT at step 5" in stopped.output and not (parts / "sweep.json").exists()
    small = parts / "sweep/small"
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in small.rglob("*") if p.is_file()}
    assert (small / "metrics.json").is_file() and (small / "model/model.safetensors").is_file()
    resumed = resume_as_told(monkeypatch, stopped.output, "pretrain", parts, [6, 7, 8])
    assert resumed.output.count("finished before; kept.") == 1
    assert f"resuming from {parts / 'sweep/large/checkpoints/checkpoint-5'}" in resumed.output
    assert kept == {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in small.rglob("*") if p.is_file()}
    for name in ("small", "large"):
        expected, got = step_losses(full / "sweep" / name), step_losses(parts / "sweep" / name)
        assert sorted(got) == sorted(expected) == list(range(1, 9)), name
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (name, step)
        assert_same_weights(weights(full / "sweep" / name / "model/model.safetensors"),
                            weights(parts / "sweep" / name / "model/model.safetensors"))
    a, b = (json.loads((run / "sweep.json").read_text()) for run in (full, parts))
    assert [s["eval_loss"] for s in b["sizes"]] == pytest.approx([s["eval_loss"] for s in a["sizes"]], rel=1e-5)
    assert b["fit"]["alpha"] == pytest.approx(a["fit"]["alpha"], rel=1e-4)
