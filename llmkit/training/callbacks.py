"""Trainer callbacks: JSONL log history, NaN guard, Ctrl-C checkpointing."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

from transformers import TrainerCallback


class JsonlLogCallback(TrainerCallback):
    """Append every log record to `log_history.jsonl` as it happens, so a crash keeps the history so far."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({**logs, "step": state.global_step, "epoch": state.epoch}) + "\n")


class NanGuardCallback(TrainerCallback):
    """Stop training as soon as the logged loss is NaN or infinite, remembering the step."""

    def __init__(self):
        self.bad_step: int | None = None
        self.bad_value: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
        # A NaN gradient norm means the weights are NaN from here on, even when HF's logging_nan_inf_filter
        # hides the loss; an infinite one alone is fp16 loss scaling skipping a step, not a failure.
        if loss is not None and not math.isfinite(loss):
            self.bad_step, self.bad_value = state.global_step, loss
        elif grad_norm is not None and math.isnan(grad_norm):
            self.bad_step, self.bad_value = state.global_step, grad_norm
        if self.bad_step is not None:
            control.should_training_stop = True


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. A second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): keep the default behaviour
            self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nInterrupted: saving a checkpoint after this step (Ctrl-C again to abort without saving).",
              flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class TrainingStartedCallback(TrainerCallback):
    """Records that the first step began, to tell checkpoint-loading errors from training errors."""

    def __init__(self):
        self.started = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = True
