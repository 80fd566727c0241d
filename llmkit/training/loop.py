"""The part of every training recipe after the model and data exist: train, guard, save, report.

Writes the run directory of SPEC §6: config.yaml, env.json, log_history.jsonl,
checkpoints/, model/, metrics.json, report.md + loss.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.config.loader import save_config
from llmkit.errors import UserError, first_line
from llmkit.training import rundir
from llmkit.training.arguments import attention_implementation, ddp_find_unused_parameters, fast_cpu_bf16_attention
from llmkit.training.callbacks import InterruptCallback, JsonlLogCallback, NanGuardCallback, TrainingStartedCallback
from llmkit.training.report import write_report
from llmkit.training.trainer import MeanLossTrainer

EXIT_INTERRUPTED = 130


class TrainingInterrupted(UserError):
    """Ctrl-C during training: a checkpoint was saved; the run can be resumed."""

    exit_code = EXIT_INTERRUPTED


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


def train_and_save(*, cfg: Any, command: str, run_dir: Path, args: Any, model: Any, tokenizer: Any,
                   train_dataset: Any, eval_dataset: Any, data_collator: Any, precision: str,
                   trainer_cls: type = MeanLossTrainer, save: Callable[[Any, Path], None] | None = None,
                   **trainer_kwargs: Any) -> TrainingRun:
    """Train with HF Trainer inside a run directory; save the final model (or, given `save`, an adapter into
    `adapter/` with it); return train metrics."""
    main = args.process_index == 0
    rundir.check_resume_config(run_dir, cfg)
    requested = getattr(getattr(cfg, "model", None), "attn_implementation", None)
    attention = fast_cpu_bf16_attention(model, requested, precision, args.device.type)
    if attention and main:
        print(f"attention: {attention} for bf16 training on CPU (faster than SDPA's bf16 backward here; "
              "model.attn_implementation overrides)")
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
    nan_guard, interrupt, started = NanGuardCallback(), InterruptCallback(), TrainingStartedCallback()
    trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                          processing_class=tokenizer, data_collator=data_collator,
                          callbacks=[JsonlLogCallback(run_dir / "log_history.jsonl"), nan_guard, interrupt, started],
                          **trainer_kwargs)
    if checkpoint and main:
        print(f"resuming from {checkpoint}")
    resumed = _checkpoint_state(checkpoint)
    start = time.perf_counter()
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        if checkpoint and not started.started:
            raise UserError(f"train.resume: the checkpoint {checkpoint} cannot be loaded into this model/config "
                            f"({first_line(e)}) Resume with the config the run was started with "
                            f"({run_dir / 'config.yaml'}), or start a new run.") from None
        raise
    wall = time.perf_counter() - start
    if nan_guard.bad_step is not None:
        raise UserError(f"training stopped: the loss (or its gradient) became {nan_guard.bad_value} at step "
                        f"{nan_guard.bad_step}. "
                        "Lower train.learning_rate, use train.precision: fp32 or bf16 instead of fp16, or check the "
                        f"data for broken rows. Logs so far are in {run_dir}.")
    if interrupt.requested:
        if main:
            rundir.write_log_history(run_dir / "log_history.jsonl", trainer.state.log_history)
        raise TrainingInterrupted(f"Interrupted at step {trainer.state.global_step}; a checkpoint was saved in "
                                  f"{run_dir / rundir.CHECKPOINTS}. Continue with: llmkit {command} "
                                  f"{run_dir / 'config.yaml'} train.resume=auto --output-dir {run_dir}")
    saved_as = "model" if save is None else "adapter"
    if save is None:
        trainer.save_model(str(run_dir / saved_as))
    elif main:
        save(trainer, run_dir / saved_as)
    metrics = dict(output.metrics)
    # Throughput of this session's training steps: tokens seen since the start (or the resumed checkpoint),
    # over wall time minus the evaluations run in between.
    eval_seconds = sum(h["eval_runtime"] for h in trainer.state.log_history
                       if "eval_runtime" in h and h.get("step", 0) > resumed.get("global_step", 0))
    tokens = trainer.state.num_input_tokens_seen - resumed.get("num_input_tokens_seen", 0)
    train_seconds = max(wall - eval_seconds, 1e-9)
    metrics.update(train_tokens=tokens, train_tokens_per_second=tokens / train_seconds, world_size=args.world_size,
                   precision=precision)
    return TrainingRun(trainer=trainer, run_dir=run_dir, metrics=metrics, command=command, saved_as=saved_as)


def _checkpoint_state(checkpoint: str | None) -> dict:
    """The trainer_state.json of the checkpoint a run resumes from ({} for a fresh run)."""
    if not checkpoint:
        return {}
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())
