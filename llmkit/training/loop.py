"""The part of every training recipe after the model and data exist: train, guard, save, report.

Writes the run directory (docs/run-directory.md): config.yaml, env.json, log_history.jsonl,
checkpoints/, model/, metrics.json, report.md + loss.png.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config.loader import save_config
from llmkit.errors import UserError, first_line
from llmkit.training import rundir
from llmkit.training.arguments import (
    attention_implementation,
    cpu_training_attention,
    ddp_find_unused_parameters,
    packed_rows,
    requested_attention,
    unwrapped,
)
from llmkit.training.callbacks import InterruptCallback, JsonlLogCallback, TrainingStartedCallback
from llmkit.training.embedding_grad import embedding_gradients_in_place
from llmkit.training.report import write_report
from llmkit.training.tracking import use_llmkit_tracking
from llmkit.training.trainer import MeanLossTrainer

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_SAVE_FAILED = 1
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


class TrainingInterrupted(UserError):
    """Ctrl-C or SIGTERM during training: a checkpoint was saved; the run can be resumed."""

    exit_code = EXIT_INTERRUPTED


class SaveFailed(UserError):
    """Writing a checkpoint or the model failed (a full disk): the earlier checkpoints are intact."""

    exit_code = EXIT_SAVE_FAILED


@dataclass
class TrainingRun:
    """A finished training: the Trainer (for predictions) and the metrics so far."""

    trainer: Any
    run_dir: Path
    metrics: dict
    command: str
    saved_as: str = "model"

    @property
    def is_main(self) -> bool:
        return self.trainer.is_world_process_zero()

    def finish(self, metrics: dict, sections: list[tuple[str, str]], summary: dict, headline: list[str]) -> dict:
        """Write metrics.json, log_history.jsonl and report.md; print the headline metrics."""
        history = self.trainer.state.log_history
        if self.is_main:
            rundir.write_json(self.run_dir / "metrics.json", metrics)
            rundir.write_log_history(self.run_dir / "log_history.jsonl", history)
            summary = {**summary, "run directory": str(self.run_dir),
                       "train runtime": f"{metrics.get('train_runtime', 0):.1f} s",
                       "train tokens/s": f"{metrics.get('train_tokens_per_second', 0):.0f}"}
            report = write_report(self.run_dir, f"llmkit {self.command}", summary,
                                  {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, sections, history)
            shown = "  ".join(f"{k}={metrics[k]:.4f}" for k in headline)
            print(f"\n{shown}\nrun: {self.run_dir}  (report: {report.name}, {self.saved_as}: {self.saved_as}/)")
        return metrics


def _refuse_label_smoothing(args: Any, trainer_cls: type, command: str) -> None:
    """transformers smooths labels inside Trainer.compute_loss; a trainer with its own loss (distillation,
    contrastive, preference, prompt scoring, pretraining's token loss) never reads train.label_smoothing_factor:
    refuse it, not ignore it. A trainer that hands smoothing back to transformers says so (`smooths_labels`)."""
    from transformers import Trainer

    own_loss = trainer_cls.compute_loss is not Trainer.compute_loss
    if args.label_smoothing_factor and own_loss and not getattr(trainer_cls, "smooths_labels", False):
        raise UserError(f"train.label_smoothing_factor: {args.label_smoothing_factor} applies to transformers' own "
                        f"loss, and llmkit {command} trains this model with its own ({trainer_cls.__name__}), which "
                        "does not smooth labels. Remove it (a preference run's conservative DPO is "
                        "preference.label_smoothing).")


def train_and_save(*, cfg: Any, command: str, run_dir: Path, args: Any, model: Any, tokenizer: Any,
                   train_dataset: Any, eval_dataset: Any, data_collator: Any, precision: str,
                   trainer_cls: type = MeanLossTrainer, save: Callable[[Any, Path], None] | None = None,
                   saved_as: str | None = None,
                   resume_dir: Path | None = None, **trainer_kwargs: Any) -> TrainingRun:
    """Train with HF Trainer inside a run directory; save the final model (or, given `save`, an adapter into
    `adapter/` with it, or whatever `save` writes into the folder `saved_as` names); return train metrics.
    `resume_dir`: the run directory the command's resume hint names
    when `run_dir` is a member's folder inside it (a prompt seed, a sweep size); default `run_dir`."""
    main = args.process_index == 0
    _refuse_label_smoothing(args, trainer_cls, command)
    rundir.check_resume_config(run_dir, cfg)
    key, requested = requested_attention(cfg)
    loaded_with = attention_implementation(model)
    reason = cpu_training_attention(model, requested, precision, args.device.type, cfg.train.cpu_dropout,
                                    packed_rows(cfg))
    if reason and main:
        print(f"attention: eager for {reason}; {key} overrides")
    if args.world_size > 1 and args.ddp_find_unused_parameters is None:
        args.ddp_find_unused_parameters = ddp_find_unused_parameters(model)
    if main:
        save_config(cfg, run_dir / "config.yaml", command)
        environment = rundir.environment(precision, args.world_size)
        environment["attn_implementation"] = attention_implementation(model)
        if args.world_size > 1:
            environment["ddp_find_unused_parameters"] = args.ddp_find_unused_parameters
        rundir.write_json(run_dir / "env.json", environment)
    checkpoint = rundir.find_resume_checkpoint(run_dir, cfg.train.resume)
    interrupt, started = InterruptCallback(), TrainingStartedCallback()
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                          processing_class=tokenizer, data_collator=data_collator, on_nan=cfg.train.on_nan,
                          interrupt=interrupt, cpu_dropout=cfg.train.cpu_dropout,
                          callbacks=[JsonlLogCallback(run_dir / "log_history.jsonl"), interrupt, started],
                          **trainer_kwargs)
    use_llmkit_tracking(trainer, cfg, command, run_dir, resume_dir or run_dir)  # train.report_to, in the run dir
    if checkpoint and main:
        print(f"resuming from {checkpoint}")
    resumed = _checkpoint_state(checkpoint)
    start = time.perf_counter()
    top = resume_dir or run_dir  # the whole run resumes (finished seeds and sizes are kept), not one member
    resume_hint = f"llmkit {command} {top / 'config.yaml'} train.resume=auto --output-dir {top}"
    in_place = args.device.type == "cpu" and args.world_size == 1 and not args.torch_compile
    try:
        with embedding_gradients_in_place(model, enabled=in_place):
            output = trainer.train(resume_from_checkpoint=checkpoint)
    except OSError as e:
        if e.errno in DISK_ERRORS:
            raise _save_failed(e, run_dir, "a checkpoint", resume_hint) from None
        _refuse_checkpoint(e, checkpoint, started, run_dir)
        raise
    except (RuntimeError, ValueError, KeyError) as e:
        _refuse_checkpoint(e, checkpoint, started, run_dir)
        raise
    wall = time.perf_counter() - start
    if reason:  # inference (evaluation, distill's timing of student against teacher) uses what the model loaded
        unwrapped(model).set_attn_implementation(loaded_with)
    guard = trainer.guard
    if guard.bad_step is not None:
        several = f" ({len(guard.skipped) + 1} bad steps in a row)" if guard.skipped and cfg.train.on_nan == "skip" \
            else ""
        raise UserError(f"training stopped: the loss (or its gradient) became {guard.bad_value} at step "
                        f"{guard.bad_step}{several}; that update was not applied. Lower train.learning_rate, use "
                        "train.precision: fp32 or bf16 instead of fp16, check the data for broken rows, or set "
                        f"train.on_nan: skip to drop such batches and go on. Logs so far are in {run_dir}.")
    if guard.skipped and main:
        print(f"train.on_nan=skip: dropped the update of {len(guard.skipped)} step(s) with a non-finite loss or "
              f"gradient: {', '.join(map(str, guard.skipped[:20]))}{' ...' if len(guard.skipped) > 20 else ''}")
    if interrupt.requested:
        if main:
            rundir.write_log_history(run_dir / "log_history.jsonl", trainer.state.log_history)
        interrupted = TrainingInterrupted(f"Interrupted by {interrupt.signal_name} at step "
                                          f"{trainer.state.global_step}: a checkpoint was saved in "
                                          f"{run_dir / rundir.CHECKPOINTS}. Continue with: {resume_hint}")
        interrupted.exit_code = EXIT_TERMINATED if interrupt.signal_name == "SIGTERM" else EXIT_INTERRUPTED
        raise interrupted
    saved_as = saved_as or ("model" if save is None else "adapter")
    try:
        if save is None:
            trainer.save_model(str(run_dir / saved_as))
        elif main:
            save(trainer, run_dir / saved_as)
    except OSError as e:
        if e.errno in DISK_ERRORS:
            raise _save_failed(e, run_dir, f"the final {saved_as}", resume_hint) from None
        raise
    metrics = dict(output.metrics)
    if guard.skipped:
        metrics["skipped_steps"] = guard.skipped
    if args.world_size > 1:
        metrics["replicas_identical"] = replicas_identical(trainer)
    # Throughput of this session's training steps: tokens seen since the start (or the resumed checkpoint),
    # over wall time minus the evaluations run in between.
    eval_seconds = sum(h["eval_runtime"] for h in trainer.state.log_history
                       if "eval_runtime" in h and h.get("step", 0) > resumed.get("global_step", 0))
    tokens = trainer.state.num_input_tokens_seen - resumed.get("num_input_tokens_seen", 0)
    train_seconds = max(wall - eval_seconds, 1e-9)
    metrics.update(train_tokens=tokens, train_tokens_per_second=tokens / train_seconds, world_size=args.world_size,
                   precision=precision)
    return TrainingRun(trainer=trainer, run_dir=run_dir, metrics=metrics, command=command, saved_as=saved_as)


def _refuse_checkpoint(e: Exception, checkpoint: str | None, started: TrainingStartedCallback, run_dir: Path) -> None:
    """A failure while loading the resume checkpoint (before the first step) is a mismatch of run and config."""
    if checkpoint and not started.started:
        raise UserError(f"train.resume: the checkpoint {checkpoint} cannot be loaded into this model/config "
                        f"({first_line(e)}) Resume with the config the run was started with "
                        f"({run_dir / 'config.yaml'}), or start a new run.") from None


def _save_failed(e: OSError, run_dir: Path, what: str, resume_hint: str) -> SaveFailed:
    ckpt_dir = run_dir / rundir.CHECKPOINTS
    good = next((c for c in rundir.checkpoints_newest_first(ckpt_dir) if rundir.checkpoint_problem(c) is None),
                None) if ckpt_dir.is_dir() else None
    kept = f"the newest complete checkpoint, {good}, is intact" if good else "no complete checkpoint was saved yet"
    return SaveFailed(f"could not write {what} in {run_dir} ({e.strerror or first_line(e)}); {kept}. Free space "
                      f"(or fix the disk), then continue with: {resume_hint}")


def replicas_identical(trainer: Any) -> bool | None:
    """Whether every process ended with the same weights (plain data-parallel training), from a float64 sum and
    norm of each parameter all-gathered across ranks; None where parameters are sharded (FSDP, ZeRO-3).

    Every rank applies the same all-reduced gradients to the same initial weights, so any difference means the
    run was not one data-parallel training (e.g. ranks that each trained alone).
    """
    import torch
    from accelerate.utils import DistributedType

    if trainer.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return None
    params = [p.detach() for _, p in sorted(trainer.accelerator.unwrap_model(trainer.model).named_parameters())]
    sums = torch.stack([torch.stack([p.double().sum(), p.double().norm()]) for p in params]).flatten()
    gathered = trainer.accelerator.gather(sums.unsqueeze(0))
    identical = bool((gathered == gathered[0]).all())
    if not identical and trainer.is_world_process_zero():
        print(f"warning: the {gathered.shape[0]} processes ended with different weights; this was not one "
              "data-parallel run (see docs/distributed.md for launches that really distribute).")
    return identical


def _checkpoint_state(checkpoint: str | None) -> dict:
    """The trainer_state.json of the checkpoint a run resumes from ({} for a fresh run)."""
    if not checkpoint:
        return {}
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())
