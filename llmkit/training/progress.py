"""What a user watches while a model trains: a live bar on a terminal, one aligned line per logging step elsewhere.

transformers prints each log record as a Python dict of quoted numbers (PrinterCallback), or draws a tqdm bar that
the CLI's quiet library logging switches off along with the download bars. The Trainers of llmkit carry this
callback instead:

- on a terminal (stdout and stderr both a TTY), one bar per training and evaluation phase: steps done/total,
  loss, learning rate, tokens/s, elapsed and ETA; the per-step lines are written above the training bar;
- elsewhere (CI, `| tee`, a log file), one line per logging step,
  `step  120/2105  loss 0.412   lr 9.1e-05    2,706 tok/s  3:12 / ~52:40`;
- an evaluation as one `name=value` line of its headline metrics (every metric with --verbose); the full set
  stays in log_history.jsonl, metrics.json and report.md.

`llmkit --quiet` drops the bars and these lines (the plan and the final results remain), `--verbose` adds every
metric; the CLI passes the choice through the LLMKIT_PROGRESS environment variable, which a multi-process launch
hands to every rank. Only the main process writes.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from time import perf_counter

from tqdm import tqdm
from transformers import TrainerCallback

VERBOSITY_ENV = "LLMKIT_PROGRESS"
VERBOSITIES = ("quiet", "normal", "verbose")
# In every log record but not a result: the Trainer's bookkeeping (epoch, tokens so far, speed of the phase).
_BOOKKEEPING = ("epoch", "step", "num_input_tokens_seen", "total_flos", "train_runtime", "train_tokens_per_second",
                "train_samples_per_second", "train_steps_per_second")
_SPEED = ("runtime", "samples_per_second", "steps_per_second", "tokens_per_second")  # of an evaluation
HEADLINE_METRICS = 6  # an evaluation line shows at most this many metrics without --verbose


def verbosity() -> str:
    """quiet, normal or verbose, as the CLI's --quiet / --verbose set it (normal otherwise)."""
    value = os.environ.get(VERBOSITY_ENV, "normal")
    return value if value in VERBOSITIES else "normal"


def is_terminal() -> bool:
    """Whether a live bar can be drawn: stdout and stderr both a terminal that can move its cursor."""
    streams = (sys.stdout, sys.stderr)
    return all(getattr(s, "isatty", lambda: False)() for s in streams) and os.environ.get("TERM") != "dumb"


def clock(seconds: float) -> str:
    """3:12, 52:40, 1:02:03."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def number(value: float) -> str:
    """A metric as a reader wants it: 4 significant digits, integers as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def eval_prefix(logs: dict) -> str | None:
    """The metric prefix of an evaluation record (`eval`, `test`, `eval_sst2`), None for other records: every
    evaluation reports its `{prefix}_runtime`."""
    for key in logs:
        if key.endswith("_runtime") and key != "train_runtime":
            return key[: -len("_runtime")]
    return None


def headline(logs: dict, prefix: str, every: bool = False) -> list[tuple[str, float]]:
    """(name without the prefix, value) of an evaluation's metrics: without `every`, not the speed figures and
    not the breakdowns of another metric shown (`precision_negative` beside `precision`), at most
    HEADLINE_METRICS."""
    start = f"{prefix}_"
    metrics = {k[len(start):]: v for k, v in logs.items()
               if k.startswith(start) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if every:
        return list(metrics.items())
    kept = [(name, value) for name, value in metrics.items()
            if name not in _SPEED and not any(name.startswith(other + "_") for other in metrics if other != name)]
    return kept[:HEADLINE_METRICS]


class _Pace:
    """Elapsed time, tokens/s over the last interval and the ETA.

    The rate leaves out what runs between two steps besides loading their data: evaluations and checkpoint
    saves (from the end of the step they follow to the Trainer's on_evaluate / on_save). The ETA keeps them, at
    the rate seen so far, since the rest of the run has its own.
    """

    def __init__(self, state):
        self.start = self.last_time = self.step_end = perf_counter()
        self.first_step = self.last_step = state.global_step  # a resumed run counts from its checkpoint
        self.last_tokens = state.num_input_tokens_seen or 0
        self.paused = 0.0
        self.pause_end: float | None = None

    def step_ended(self) -> None:
        self.step_end = perf_counter()

    def pause_ended(self) -> None:
        """An evaluation or a checkpoint save after the last step has finished."""
        self.pause_end = perf_counter()

    def step_begins(self) -> None:
        if self.pause_end is not None:
            self.paused += max(self.pause_end - self.step_end, 0.0)
            self.pause_end = None

    def interval(self, state) -> tuple[float | None, float | None]:
        """(tokens/s, steps/s) since the last log; tokens/s is None when the Trainer does not count tokens."""
        now = perf_counter()
        seconds = max(now - self.last_time - self.paused, 1e-9)
        tokens = state.num_input_tokens_seen or 0
        token_rate = (tokens - self.last_tokens) / seconds if tokens else None
        step_rate = (state.global_step - self.last_step) / seconds
        self.last_time, self.last_tokens, self.last_step, self.paused = now, tokens, state.global_step, 0.0
        return token_rate, step_rate

    def times(self, state) -> tuple[float, float | None]:
        """(elapsed seconds, estimated seconds for the whole run or None before the first step)."""
        elapsed = perf_counter() - self.start
        done = state.global_step - self.first_step
        if done <= 0:
            return elapsed, None
        return elapsed, elapsed + elapsed / done * max(state.max_steps - state.global_step, 0)


class TrainingProgress(TrainerCallback):
    """llmkit's progress display for every Trainer it builds (see the module docstring)."""

    def __init__(self, level: str | None = None, live: bool | None = None):
        self.level = level or verbosity()
        self.live = is_terminal() if live is None else live
        self.pace: _Pace | None = None
        self.train_bar = None
        self.eval_bar = None
        self.phase = "eval"  # the running evaluation's metric prefix (`test` on the test split), set by the trainer

    def shows_bar(self, args) -> bool:
        """A live bar: on a terminal, unless --quiet or train.disable_tqdm: true (then step lines, as off one)."""
        return self.live and not getattr(args, "disable_tqdm", False) and self.level != "quiet"

    # ---- training

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.pace = _Pace(state)
        if self.shows_bar(args):
            self.train_bar = _bar(total=state.max_steps, initial=state.global_step, desc="train", leave=True)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.pace is not None:
            self.pace.step_begins()

    def on_step_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.pace is not None:
            self.pace.step_ended()
        if self.train_bar is not None:
            self.train_bar.update(state.global_step - self.train_bar.n)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.pace is not None:
            self.pace.pause_ended()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.train_bar is not None:
            self.train_bar.close()
            self.train_bar = None

    # ---- evaluation

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not (state.is_world_process_zero and self.shows_bar(args)):
            return
        if self.eval_bar is None:
            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            self.eval_bar = _bar(total=total, initial=0, desc=self.phase, leave=False)
        self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_eval_bar(state)
        if state.is_world_process_zero and self.pace is not None:
            self.pace.pause_ended()

    def on_predict(self, args, state, control, **kwargs):
        self._close_eval_bar(state)

    def _close_eval_bar(self, state) -> None:
        if state.is_world_process_zero and self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None

    # ---- log records

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        prefix = eval_prefix(logs)
        if prefix is not None:
            if self.level != "quiet":
                self._write(self.eval_line(logs, prefix, state))
        elif "loss" in logs and self.pace is not None:
            line, short = self.step_line(logs, state)
            if self.train_bar is not None:
                self.train_bar.set_postfix_str(short, refresh=True)
            if self.level != "quiet":
                self._write(line)

    def step_line(self, logs: dict, state) -> tuple[str, str]:
        """(the line of a logging step, its loss / lr / speed for the live bar's postfix)."""
        token_rate, step_rate = self.pace.interval(state)
        values = [("loss", number(logs["loss"]), 7)]
        if isinstance(logs.get("learning_rate"), (int, float)):
            values.append(("lr", f"{logs['learning_rate']:.1e}", 7))
        speed = (f"{token_rate:,.0f}", "tok/s") if token_rate is not None else (f"{step_rate:.2f}", "step/s")
        if self.level == "verbose":
            values += [(k, number(v), 0) for k, v in logs.items() if k not in ("loss", "learning_rate")
                       and k not in _BOOKKEEPING and isinstance(v, (int, float))]
        elapsed, total = self.pace.times(state)
        when = f"{clock(elapsed)} / ~{clock(total)}" if total is not None and math.isfinite(total) else clock(elapsed)
        width = len(str(state.max_steps))
        aligned = [f"{name} {value:<{pad}}" for name, value, pad in values[:2]] + [f"{speed[0]:>7} {speed[1]}"]
        aligned += [f"{name} {value}" for name, value, _ in values[2:]]
        line = f"step {state.global_step:>{width}}/{state.max_steps}  " + "  ".join(aligned + [when])
        short = "  ".join([f"{name} {value}" for name, value, _ in values[:2]] + [" ".join(speed)])
        return line, short

    def eval_line(self, logs: dict, prefix: str, state) -> str:
        """`eval  step 120/2105  loss=0.6898  accuracy=0.5625  f1=0.36`."""
        shown = headline(logs, prefix, every=self.level == "verbose")
        width = len(str(state.max_steps))
        where = f"step {state.global_step:>{width}}/{state.max_steps}" if state.max_steps else ""
        return "  ".join(x for x in (prefix, where, "  ".join(f"{k}={number(v)}" for k, v in shown)) if x)

    def _write(self, line: str) -> None:
        if self.train_bar is not None or self.eval_bar is not None:
            tqdm.write(line, file=sys.stdout)  # above the bars, which are drawn again below it
        else:
            print(line, flush=True)


def _bar(total: int | None, initial: int, desc: str, leave: bool):
    # The terminal's size (COLUMNS / LINES first), 80 x 24 where it reports none, as a fresh pseudo-terminal does:
    # tqdm's own measure would take 0 rows and hide the bar.
    size = shutil.get_terminal_size()
    return tqdm(total=total, initial=initial, desc=desc, leave=leave, ncols=size.columns, nrows=size.lines,
                unit="step", file=sys.stderr,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")


def use_llmkit_progress(trainer) -> None:
    """Replace transformers' progress and printing callback on `trainer` (a dict printer, a tqdm bar or, in a
    notebook, its HTML table) by TrainingProgress."""
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK
    from transformers.trainer_callback import PrinterCallback

    for shown_by_transformers in {PrinterCallback, DEFAULT_PROGRESS_CALLBACK}:
        trainer.remove_callback(shown_by_transformers)
    trainer.add_callback(TrainingProgress())
