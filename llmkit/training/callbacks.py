"""Trainer callbacks: JSONL log history, Ctrl-C / SIGTERM checkpointing, start of training."""

from __future__ import annotations

import json
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


class InterruptCallback(TrainerCallback):
    """Ctrl-C (SIGINT) or SIGTERM (a scheduler's pre-emption, `kill`): finish the current step, save a checkpoint,
    stop. A second signal aborts at once.

    It only records the signal: the trainer's NonFiniteGuard acts on it at the step's end, where the ranks of a
    multi-process launch agree (one all-reduce per step for both), so they save and stop at the same step even
    when only one of them got the signal; otherwise the others would wait for it forever in the next step's
    gradient all-reduce.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict = {}
        self._speaks = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._speaks = state.is_world_process_zero  # every rank gets Ctrl-C; one says so
        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep the default behaviour
                pass

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        key = "Ctrl-C" if signum == signal.SIGINT else "the signal"
        if self._speaks:
            print(f"\n{self.signal_name}: saving a checkpoint after this step ({key} again to abort without "
                  "saving).", flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


class TrainingStartedCallback(TrainerCallback):
    """Records that the first step began, to tell checkpoint-loading errors from training errors."""

    def __init__(self):
        self.started = False

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = True
