"""One training run's lifecycle, the same for every training command.

    run = RunLifecycle(cfg, "finetune", config_path=..., overwrite=...)   # launch state, seed, precision, path
    ... tokenizer, data (on the main process first: run.state.main_process_first()), model ...
    args = run.arguments(eval_strategy="no")      # TrainingArguments, errors naming the train. key
    run.plan(args, len(train))                    # prints the plan
    run.memory(model, args, length, logits=...)   # prints the memory estimate (and a warning past the free memory)
    if dry_run: return ...                        # every check above ran, nothing was written
    run.claim()                                   # the run directory, checked, locked, marked
    result = run.train(args=args, model=..., ...) # train, guard, checkpoint, save (training/loop.py)
    return result.finish(metrics, sections, summary, headline)   # metrics.json, log, report.md

`precision` is resolved once here and handed to everything that needs it; the run directory's path is fixed
at the start, so the checkpoints folder in the TrainingArguments is the one that will be claimed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.config.loader import save_config
from llmkit.config.training_arguments import (
    TrainingArgumentsError,
    auto_precision_reason,
    make_training_arguments,
    resolve_precision,
)
from llmkit.errors import UserError
from llmkit.training import rundir
from llmkit.training.arguments import launch_state, pad_multiple, planned_steps
from llmkit.training.loop import TrainingRun, train_and_save


class RunLifecycle:
    """A training command's run: which process this is, the seed, the precision, the run directory and the
    trainer's arguments, in the order a recipe needs them."""

    def __init__(self, cfg: Any, command: str, *, config_path: str | None = None, overwrite: bool | str = False):
        from transformers import set_seed

        self.cfg, self.command, self.config_path, self.overwrite = cfg, command, config_path, overwrite
        self.state = launch_state(cfg.train)  # under torchrun / accelerate launch: which process this is
        set_seed(cfg.train.seed)
        self.precision = resolve_precision(cfg.train.precision)
        given = Path(cfg.output_dir) if cfg.output_dir else rundir.default_run_dir(command, config_path)
        self.path = given.expanduser().resolve()
        self.run_dir: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def print(self, text: str) -> None:
        """Print on the main process only."""
        self.state.print(text)

    def arguments(self, subdir: str | Path | None = None, **overrides: Any) -> Any:
        """TrainingArguments for one trainer of this run, with checkpoints under the run directory (or its
        `subdir`, e.g. a prompt seed's folder); a combination TrainingArguments rejects names its train. key."""
        base = self.path / subdir if subdir else self.path
        try:
            return make_training_arguments(self.cfg.train, str(base / rundir.CHECKPOINTS), **overrides)
        except TrainingArgumentsError as e:
            raise UserError(f"train.{e.key}: {e.message}" if e.key else f"train: {e.message}") from None

    def pad_multiple(self, args: Any) -> int | None:
        return pad_multiple(self.precision, args.device.type)

    def plan(self, args: Any, train_examples: int, note: str = "") -> int:
        """Print the plan (optimizer steps, batch, processes, precision); return the steps."""
        steps = planned_steps(args, train_examples)
        why = f" (auto: {auto_precision_reason()})" if self.cfg.train.precision == "auto" else ""
        self.print(f"plan: {steps} optimizer steps{note}, batch {args.per_device_train_batch_size} x accumulation "
                   f"{args.gradient_accumulation_steps} x {args.world_size} process(es), precision {self.precision}"
                   f"{why}")
        return steps

    def memory(self, model: Any, args: Any, length: int, *, logits: bool, rows_per_example: int = 1,
               frozen: tuple[Any, ...] = (), packed: bool = False, fused_head: bool = False) -> Any:
        """Print the memory estimate of training `model` with `args` on examples of up to `length` tokens
        (`rows_per_example`: rows one example puts in the batch, 2 for preference pairs; `logits`: the loss takes
        vocabulary-wide logits at every position; `frozen`: models kept beside it), and a warning with the
        settings that reduce it when it exceeds the free memory; `packed`: the batch is flattened into one row
        (task.packing), so attention spans all of its tokens; `fused_head`: the command's trainer computes a causal
        LM's loss through training/fused_loss.py where the model allows it; return the estimate
        (training/memory.py)."""
        from llmkit.training import fused_loss
        from llmkit.training.arguments import eager_attention_reason, requested_attention
        from llmkit.training.memory import BASELINE, Workload, estimate, free_memory

        device = args.device.type
        _, requested = requested_attention(self.cfg)
        eager = eager_attention_reason(model, requested, self.precision, device, self.cfg.train.cpu_dropout,
                                       packed)
        rows = args.per_device_train_batch_size * rows_per_example
        rows, length = (1, rows * length) if packed else (rows, length)
        work = Workload(rows=rows, length=length, logits=logits,
                        mixed=self.precision in ("bf16", "fp16"), checkpointing=bool(args.gradient_checkpointing),
                        device=device, eager=bool(eager),
                        fused=fused_head and fused_loss.for_training(model, args) is not None)
        found = estimate(model, work, args.optim, frozen, baseline=0 if device == "cuda" else BASELINE)
        found.free, found.where = free_memory(device)
        self.print(found.line())
        if found.warning():
            self.print(found.warning())
        return found

    def preview(self, lines: list[str]) -> None:
        """Print the rendered examples of a dry run (data/preview.py), trained spans green on a terminal."""
        from llmkit.data.preview import coloured, takes_colour

        for line in coloured(lines) if takes_colour() else lines:
            self.print(line)

    def claim(self) -> Path:
        """The run directory, claimed (checked again, locked, cleared when replaced, marked); after this the run
        writes."""
        self.run_dir = rundir.claim_run_dir(self.cfg, self.command, self.config_path, self.overwrite, self.state,
                                            path=self.path)
        return self.run_dir

    def write_run_files(self) -> None:
        """config.yaml (the resolved config) and env.json (versions, device, precision) in the claimed run
        directory, on the main process; training writes them itself (train), a command that does not train calls
        this."""
        if self.is_main and self.run_dir is not None:
            save_config(self.cfg, self.run_dir / "config.yaml", self.command)
            rundir.write_json(self.run_dir / "env.json", rundir.environment(self.precision, self.state.num_processes))

    def train(self, run_dir: Path | None = None, cfg: Any = None, **kwargs: Any) -> TrainingRun:
        """Train, guard, checkpoint and save in the claimed run directory (or `run_dir` inside it; `cfg`: a
        member's own config, as a size sweep trains several models)."""
        target = run_dir or self.run_dir
        if target is None:
            raise RuntimeError("RunLifecycle.train before claim()")  # a recipe bug, not a user's mistake
        return train_and_save(cfg=cfg or self.cfg, command=self.command, run_dir=target, precision=self.precision,
                              resume_dir=self.run_dir, **kwargs)
