"""Training a model for a task: the flow `llmkit finetune` and `llmkit adapter` share (the adapter variant wraps
the model and saves only the adapter and the head).

Reads top to bottom: tokenizer -> data -> model (-> adapter) -> plan -> run directory -> train -> evaluate
every split -> report.

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.models.adapters import adapter_metadata, find_adapter_dir, save_adapter
from llmkit.models.loading import (
    check_attn_implementation,
    check_sequence_length,
    count_parameters,
    freeze,
    load_tokenizer,
    model_label,
    model_source,
)
from llmkit.smoke import NEW_TOKENS, Shrink, SmokeSpec, cap
from llmkit.tasks.strategies import task_for
from llmkit.training.arguments import check_best_metric, packed_rows

HEADLINE = ("eval_rewards/accuracies", "eval_rewards/margins",
            "eval_accuracy", "eval_f1", "test_accuracy", "test_f1", "eval_spearman", "eval_pearson", "test_spearman",
            "eval_loss", "eval_perplexity")


def shorter_samples(cfg: Any, shrink: Shrink) -> None:
    """Smoke mode: the sample generations after SFT stop after a few tokens."""
    if cfg.task.type in ("causal-lm", "preference"):
        cap(cfg.task, "sample_max_new_tokens", NEW_TOKENS)


SMOKE = SmokeSpec(adjust=shorter_samples)  # finetune and adapter: the model, the data and the steps, as any config


def fine_tune(cfg: Any, command: str, *, config_path: str | None = None, overwrite: bool | str = False,
              dry_run: bool = False) -> dict:
    """Train and evaluate; return the final metrics (also written to OUTPUT_DIR/metrics.json). With an
    `adapter:` section the model is wrapped by the adapter, and the adapter (with the task head) is saved in
    `adapter/` instead of the model."""
    from llmkit.training.lifecycle import RunLifecycle

    task = task_for(cfg)
    run = RunLifecycle(cfg, command, config_path=config_path, overwrite=overwrite)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    check_attn_implementation(cfg.model)  # before the data is prepared, which a typo there would waste
    with run.state.main_process_first():  # the main process tokenizes and caches; the others read its cache
        data = task.prepare(tokenizer, cfg.train.seed)
    run.print(f"data: {describe_splits(data.stats)}; {task.describe(data)}; "
              f"{'from cache' if data.from_cache else 'prepared'} in {data.seconds:.1f} s")
    model, description = build_model(cfg, task, tokenizer, data, command)
    run.print(description)

    overrides = dict(task.training_overrides)
    if "validation" not in data.splits:
        overrides.update(eval_strategy="no", load_best_model_at_end=False)
    args = run.arguments(**overrides)
    steps = run.plan(args, len(data.splits["train"]))
    note = task.plan_note(args)
    if note:
        run.print(note)
    metrics_fn = task.metrics(data.label_names)
    check_best_metric(cfg.train, task.metric_names(metrics_fn))
    trainable, total = count_parameters(model)
    memory_estimate(run, cfg, task, model, data, args)
    if dry_run:
        run.preview(preview(cfg, tokenizer, data))
        return {"dry_run": True, "train_steps": steps, "trainable_params": trainable, "total_params": total,
                "data": data.stats, "label_names": data.label_names}

    run_dir = run.claim()
    if args.process_index == 0 and not cfg.train.resume:
        task.before_training(model, tokenizer)
    result = run.train(
        args=args, model=model, tokenizer=tokenizer,
        save=adapter_saver(cfg, task, tokenizer) if adapter_of(cfg) else task.saver(tokenizer),
        saved_as="adapter" if adapter_of(cfg) else "model",
        train_dataset=data.splits["train"], eval_dataset=data.splits.get("validation"),
        data_collator=task.collator(tokenizer, run.pad_multiple(args)), compute_metrics=metrics_fn,
        preprocess_logits_for_metrics=metrics_fn.preprocess_logits_for_metrics if metrics_fn else None,
        **({"trainer_cls": task.trainer_cls} if task.trainer_cls else {}), **task.trainer_kwargs(model, args))
    metrics = result.metrics
    metrics.update(trainable_params=trainable, total_params=total, trainable_percent=round(100 * trainable / total, 4))
    sections = evaluate_splits(task, result.trainer, data, metrics_fn, metrics, run_dir)
    if result.trainer.is_world_process_zero():
        task.after_training(result.trainer, tokenizer, run_dir)
    return result.finish(metrics, sections, summary=summary(cfg, task.adapted(model), data),
                         headline=[k for k in HEADLINE if k in metrics][:4])


def build_model(cfg: Any, task: Any, tokenizer: Any, data: Any, command: str) -> tuple[Any, str]:
    """The model with the task's head (and the adapter, or the freeze settings); a line describing it."""
    refuse_adapter_model(cfg.model, command)
    model, missing = task.load(tokenizer, data.label_names)
    check_sequence_length(model, data.stats)
    base_name = type(model).__name__
    new_head = f"; newly initialised: {', '.join(sorted(missing))}" if missing else ""
    adapter = adapter_of(cfg)
    if adapter is None:
        freeze(model, cfg.model.freeze_embeddings, cfg.model.freeze_layers)
    else:
        from llmkit.models.adapters import describe

        model = task.attach(model, adapter, missing)
        new_head += f"\nadapter: {describe(task.adapted(model), adapter)}"
    trainable, total = count_parameters(model)
    return model, (f"model: {base_name}, {total / 1e6:.2f} M parameters, {trainable / 1e6:.2f} M trainable "
                   f"({100 * trainable / total:.2f} %){new_head}")


def evaluate_splits(task: Any, trainer: Any, data: Any, metrics_fn: Any, metrics: dict, run_dir: Path) -> list:
    """The trained model's figures on the validation and test splits (added to `metrics`); the report's
    sections (per-class scores, confusion matrices)."""
    sections = []
    for split in ("validation", "test"):
        if split not in data.splits:
            continue
        prefix = "eval" if split == "validation" else "test"
        out = trainer.predict(data.splits[split], metric_key_prefix=prefix)
        metrics.update({k: v for k, v in out.metrics.items() if not k.endswith(("_runtime", "_per_second"))})
        sections += task.report(split, metrics_fn, out, prefix, metrics,
                                run_dir if trainer.is_world_process_zero() else None)
    return sections


def summary(cfg: Any, model: Any, data: Any) -> dict:
    adapter = adapter_of(cfg)
    described = {}
    if adapter is not None:
        from llmkit.models.adapters import describe

        described["adapter"] = describe(model, adapter)
    return {"model": model_label(cfg.model),
            "task": cfg.task.type + (" (multi-label)" if cfg.task.multi_label else ""), **described,
            "classes": ", ".join(data.label_names), "data": describe_splits(data.stats)}


def adapter_of(cfg: Any) -> Any:
    """The config's adapter section (`llmkit adapter`), or None."""
    return getattr(cfg, "adapter", None)


def refuse_adapter_model(model_cfg: Any, command: str) -> None:
    """Training on top of an adapter run would train a frozen PEFT wrapper; say how to do it instead."""
    if model_cfg.name_or_path and find_adapter_dir(model_cfg.name_or_path):
        raise UserError(f"model.name_or_path: {model_cfg.name_or_path} is an adapter run. To {command} on top of "
                        "it, merge it into a standalone model first (llmkit adapter merge RUN --output DIR) and "
                        "point model.name_or_path at DIR.")


def adapter_saver(cfg: Any, task: Any, tokenizer: Any):
    """Saves the trained adapter (with its head) and what loading it needs into the run's adapter/ folder."""
    def save(trainer: Any, directory: Path) -> None:
        adapted = task.adapted(trainer.model)
        meta = adapter_metadata(adapted, cfg.adapter, cfg.task.type, cfg.model.name_or_path,
                                model_source(cfg.model), cfg.model.revision)
        save_adapter(adapted, tokenizer, directory, {**meta, **task.adapter_settings(trainer.model)})

    return save


def memory_estimate(run: Any, cfg: Any, task: Any, model: Any, data: Any, args: Any) -> Any:
    """Print the run's memory estimate (training/memory.py): a micro-batch of the longest training example, two
    rows per preference pair, one per role of a sentence pair, one row for a packed batch; the frozen reference
    copy of preference tuning."""
    kind = cfg.task.type
    if kind in ("preference", "reward-model"):
        rows = 1 if "completion_ids" in data.splits["train"].column_names else 2
    else:
        rows = len(data.roles) if kind == "sentence-embedding" else 1
    return run.memory(model, args, data.stats["train"]["max_tokens"], logits=kind in ("causal-lm", "preference"),
                      rows_per_example=rows, frozen=reference_copy(cfg, task, model),
                      packed=packed_rows(cfg), fused_head=kind == "causal-lm")


def reference_copy(cfg: Any, task: Any, model: Any) -> tuple:
    """Preference tuning of the whole model keeps a frozen copy as the reference (not with an adapter, whose base
    is the reference, nor when the method needs none or its log-probs are precomputed)."""
    if cfg.task.type != "preference" or getattr(task, "with_adapter", False):
        return ()
    from llmkit.training.preference import REFERENCE_FREE

    pref = cfg.preference
    return () if pref.method in REFERENCE_FREE or pref.precompute_ref else (model,)


def preview(cfg: Any, tokenizer: Any, data: Any) -> list[str]:
    """The first example of every split as the model will see it (data/preview.py)."""
    from llmkit.data.preview import KINDS, preview_splits

    return preview_splits(tokenizer, data.splits, KINDS[cfg.task.type], label_names=data.label_names,
                          roles=getattr(data, "roles", ()), scored=getattr(data, "scored", False))


def describe_splits(stats: dict) -> str:
    return ", ".join(f"{name} {s['examples']} examples / {s['tokens']} tokens" for name, s in stats.items())
