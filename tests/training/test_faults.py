"""Faults during training through the real CLI: SIGTERM, NaN/inf losses (stop or skip), broken checkpoints on
resume, and a full disk while saving."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmkit.training import loop
from llmkit.training.trainer import MeanLossTrainer
from tests.conftest import write_yaml
from tests.recipes.helpers import invoke


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def inject_nan(monkeypatch, steps: set[int]) -> None:
    """Make the training loss NaN on the given optimizer steps (1-based), as a broken batch would."""
    original = MeanLossTrainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = original(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not model.training or self.state.global_step + 1 not in steps:
            return out
        if return_outputs:
            return out[0] * float("nan"), out[1]
        return out * float("nan")

    monkeypatch.setattr(MeanLossTrainer, "compute_loss", compute_loss)


@pytest.fixture
def short_run(tiny_config) -> dict:
    tiny_config["train"].update(max_steps=4, logging_steps=1, save_strategy="no", eval_strategy="no",
                                lr_scheduler_type="constant", learning_rate=1e-2)
    return tiny_config


def test_nan_stop_names_the_step_and_saves_no_model(monkeypatch, tmp_path, short_run):
    inject_nan(monkeypatch, {3})
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", short_run))
    assert result.exit_code == 2, result.output
    assert "became nan at step 3; that update was not applied" in result.output
    assert "train.on_nan: skip" in result.output
    assert not (tmp_path / "run/model").exists()


def test_nan_skip_drops_only_that_update(monkeypatch, tmp_path, short_run):
    """Skipping the NaN step 3 of 3 leaves exactly the weights of a clean 2-step run (constant LR, same data
    order): the bad update was not applied, and nothing else changed."""
    clean = dict(short_run, output_dir=str(tmp_path / "clean"))
    clean["train"] = dict(short_run["train"], max_steps=2)
    assert invoke("finetune", write_yaml(tmp_path / "clean.yaml", clean)).exit_code == 0
    inject_nan(monkeypatch, {3})
    skipped = dict(short_run, output_dir=str(tmp_path / "skip"))
    skipped["train"] = dict(short_run["train"], max_steps=3, on_nan="skip")
    result = invoke("finetune", write_yaml(tmp_path / "skip.yaml", skipped))
    assert result.exit_code == 0, result.output
    assert "dropped the update of 1 step(s) with a non-finite loss or gradient: 3" in result.output
    assert json.loads((tmp_path / "skip/metrics.json").read_text())["skipped_steps"] == [3]
    a, b = weights(tmp_path / "clean/model/model.safetensors"), weights(tmp_path / "skip/model/model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_nan_skip_gives_up_when_every_step_is_bad(monkeypatch, tmp_path, short_run):
    inject_nan(monkeypatch, set(range(1, 100)))
    short_run["train"].update(max_steps=50, on_nan="skip")
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", short_run))
    assert result.exit_code == 2, result.output
    assert "at step 10 (10 bad steps in a row)" in result.output


def inject_bad_gradient(monkeypatch, steps: set[int], value: float) -> None:
    """Give one gradient entry the value `value` (inf or NaN) after the backward pass of the given optimizer steps
    (1-based), while the loss stays finite: an overflow in the backward pass alone."""
    original = MeanLossTrainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = original(self, model, inputs, num_items_in_batch)
        if self.state.global_step + 1 in steps:
            assert torch.isfinite(loss).all()
            grad = next(p.grad for p in model.parameters() if p.grad is not None)
            grad.view(-1)[0] = value
        return loss

    monkeypatch.setattr(MeanLossTrainer, "training_step", training_step)


@pytest.mark.parametrize("value, clipping", [(float("inf"), "1.0"), (float("nan"), "0")], ids=["inf", "nan-unclipped"])
def test_a_non_finite_gradient_norm_with_a_finite_loss_stops_the_run(monkeypatch, tmp_path, short_run, value,
                                                                    clipping):
    """The loss of step 3 is finite, its gradient norm is not (with gradient clipping on, and off): the update is
    not applied and the run stops, naming the step; no model is saved."""
    inject_bad_gradient(monkeypatch, {3}, value)
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", short_run), f"train.max_grad_norm={clipping}")
    assert result.exit_code == 2, result.output
    assert f"became {value} at step 3; that update was not applied" in result.output
    records = [json.loads(line) for line in (tmp_path / "run/log_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)  # the loss never was the problem
    assert not (tmp_path / "run/model").exists()


def test_a_non_finite_gradient_norm_is_skipped_like_a_nan_loss(monkeypatch, tmp_path, short_run):
    """on_nan: skip drops the update of the step whose gradient norm is infinite: the weights of a clean 2-step
    run (constant LR, same data order), exactly."""
    clean = dict(short_run, output_dir=str(tmp_path / "clean"))
    clean["train"] = dict(short_run["train"], max_steps=2)
    assert invoke("finetune", write_yaml(tmp_path / "clean.yaml", clean)).exit_code == 0
    inject_bad_gradient(monkeypatch, {3}, float("inf"))
    skipped = dict(short_run, output_dir=str(tmp_path / "skip"))
    skipped["train"] = dict(short_run["train"], max_steps=3, on_nan="skip")
    result = invoke("finetune", write_yaml(tmp_path / "skip.yaml", skipped))
    assert result.exit_code == 0, result.output
    assert "dropped the update of 1 step(s) with a non-finite loss or gradient: 3" in result.output
    assert json.loads((tmp_path / "skip/metrics.json").read_text())["skipped_steps"] == [3]
    a, b = weights(tmp_path / "clean/model/model.safetensors"), weights(tmp_path / "skip/model/model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_on_nan_is_checked(tmp_path, short_run):
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", short_run), "train.on_nan=ignore")
    assert result.exit_code == 2
    assert "train.on_nan" in result.output and "'ignore'" in result.output


@pytest.fixture
def checkpointed(tmp_path, tiny_config) -> tuple[Path, Path]:
    """A finished 4-step run with checkpoint-2 and checkpoint-4; returns (config, checkpoints dir)."""
    tiny_config["train"].update(max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="no",
                                logging_steps=1)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg)
    assert result.exit_code == 0, result.output
    ckpts = tmp_path / "run/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    return cfg, ckpts


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("broken", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_resume_passes_over_a_broken_newest_checkpoint(checkpointed, broken):
    cfg, ckpts = checkpointed
    truncate(ckpts / "checkpoint-4" / broken)
    result = invoke("finetune", cfg, "train.resume=auto", "train.max_steps=6")
    assert result.exit_code == 0, result.output
    assert "skipping checkpoint-4:" in result.output
    assert f"resuming from {ckpts / 'checkpoint-2'}" in result.output
    records = [json.loads(line) for line in (ckpts.parent / "log_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_resume_passes_over_a_checkpoint_missing_its_optimizer_state(checkpointed):
    """transformers would resume from it with a fresh optimizer, silently; llmkit takes the one before."""
    cfg, ckpts = checkpointed
    (ckpts / "checkpoint-4" / "optimizer.pt").unlink()
    result = invoke("finetune", cfg, "train.resume=auto", "train.max_steps=6")
    assert result.exit_code == 0, result.output
    assert "skipping checkpoint-4: optimizer.pt is missing" in result.output
    assert f"resuming from {ckpts / 'checkpoint-2'}" in result.output


def test_resume_from_a_broken_checkpoint_path_names_the_good_one(checkpointed):
    cfg, ckpts = checkpointed
    truncate(ckpts / "checkpoint-4/model.safetensors")
    result = invoke("finetune", cfg, f"train.resume={ckpts / 'checkpoint-4'}")
    assert result.exit_code == 2, result.output
    assert "model.safetensors is truncated or corrupt" in result.output
    assert f"The newest whole checkpoint beside it is {ckpts / 'checkpoint-2'}" in result.output


def test_resume_with_every_checkpoint_broken_is_refused(checkpointed):
    cfg, ckpts = checkpointed
    for name in ("checkpoint-2", "checkpoint-4"):
        truncate(ckpts / name / "model.safetensors")
    result = invoke("finetune", cfg, "train.resume=auto")
    assert result.exit_code == 2, result.output
    assert "no usable checkpoint" in result.output


def test_disk_full_while_saving_keeps_the_previous_checkpoint(monkeypatch, tmp_path, tiny_config):
    tiny_config["train"].update(max_steps=6, save_strategy="steps", save_steps=2, eval_strategy="no",
                                logging_steps=1, save_total_limit=1)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f) and str(f).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full_disk)
        result = invoke("finetune", cfg)
    ckpts = tmp_path / "run/checkpoints"
    assert result.exit_code == loop.EXIT_SAVE_FAILED, result.output
    assert "could not write a checkpoint" in result.output and "No space left on device" in result.output
    assert f"the newest complete checkpoint, {ckpts / 'checkpoint-2'}, is intact" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2"]  # nothing half-written is left
    resumed = invoke("finetune", cfg, "train.resume=auto")
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {ckpts / 'checkpoint-2'}" in resumed.output
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-6"]


def test_checkpoints_are_renamed_into_place_whole(tmp_path, tiny_config):
    """No staging folder is left behind, and the best checkpoint is recorded at its final path."""
    tiny_config["train"].update(max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="steps",
                                eval_steps=2, load_best_model_at_end=True, metric_for_best_model="eval_loss")
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config))
    assert result.exit_code == 0, result.output
    ckpts = tmp_path / "run/checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((ckpts / "checkpoint-4/trainer_state.json").read_text())
    assert Path(state["best_model_checkpoint"]).parent == ckpts


def test_a_second_signal_aborts_at_once_without_saving(monkeypatch, tmp_path, short_run):
    """Two real SIGINTs during step 2 (Ctrl-C pressed twice): the first asks for a checkpoint after the step, the
    second aborts there: exit code 130, one message, no checkpoint, no model, no traceback."""
    from llmkit.training.callbacks import InterruptCallback

    class TwoSigints(InterruptCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # each handler runs before the next bytecode
                os.kill(os.getpid(), signal.SIGINT)
            return super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(loop, "InterruptCallback", TwoSigints)
    previous = signal.getsignal(signal.SIGINT)
    try:
        result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", short_run), "train.max_steps=6")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == loop.EXIT_INTERRUPTED, result.output
    assert "SIGINT: saving a checkpoint after this step (Ctrl-C again to abort without saving)." in result.output
    assert result.output.rstrip().endswith("error: interrupted.") and "Traceback" not in result.output
    assert "Interrupted by SIGINT" not in result.output  # nothing was saved to resume from
    run = tmp_path / "run"
    assert not (run / "model").exists() and not any((run / "checkpoints").glob("checkpoint-*"))
    steps = [json.loads(line)["step"] for line in (run / "log_history.jsonl").read_text().splitlines()]
    assert max(steps) <= 2


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, loop.EXIT_INTERRUPTED),
                                          (signal.SIGTERM, loop.EXIT_TERMINATED)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_resume_finishes(tmp_path, tiny_config, signum, code):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM sent to a real `llmkit` process mid-training."""
    tiny_config["train"].update(max_steps=100000, logging_steps=1, save_strategy="no", eval_strategy="no")
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "finetune", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "run/log_history.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert f"Interrupted by {signum.name} at step" in out and "train.resume=auto" in out
    assert "Traceback" not in out
    checkpoints = list((tmp_path / "run/checkpoints").glob("checkpoint-*"))
    assert len(checkpoints) == 1
    stopped_at = int(checkpoints[0].name.split("-")[1])
    result = invoke("finetune", cfg, "train.resume=auto", f"train.max_steps={stopped_at + 2}")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run/metrics.json").read_text())["train_tokens"] > 0
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == list(range(1, stopped_at + 3))
