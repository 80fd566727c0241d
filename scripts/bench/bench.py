"""Run every llmkit benchmark and print one JSON object (also written to bench.json).

    python scripts/bench/bench.py [--quick] [--data-dir ../shared/data] [--out bench.json] [--only NAME,...]
                                  [--tta-rows N] [--tta-rounds R] [--tta-model DIR]
                                  [--dpo-pairs N] [--dpo-rounds R] [--dpo-model DIR] [--dpo-precision fp32|bf16]
                                  [--memory-kinds minilm,sft] [--memory-sft-model DIR] [--memory-sft-steps N]
                                  [--memory-precision fp32|bf16]

Each figure comes with its baseline, the ratio, the project's target where there is one, the settings it was
measured with, and the machine (cores, torch threads, bf16 support, load average). Pairs are measured in one
process, alternating, after a warm-up. `--quick` takes a few minutes; the full run is longer and steadier.
Progress goes to stderr; stdout holds only the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Context, log, machine_info, setup_logging  # noqa: E402

MEMORY_KINDS = ("minilm", "sft")  # the memory group's comparisons (training_benchmarks.MEMORY_KINDS)

# benchmark group -> (module in scripts/bench, function)
BENCHMARKS = {"startup": ("data_benchmarks", "bench_startup"),
              "data_cache": ("data_benchmarks", "bench_data_cache"),
              "tokenization": ("data_benchmarks", "bench_tokenization"),
              "padding": ("data_benchmarks", "bench_padding"),
              "eval": ("training_benchmarks", "bench_eval"),
              "training_loop": ("training_benchmarks", "bench_training_loop"),
              "precision": ("training_benchmarks", "bench_precision"),
              "memory": ("training_benchmarks", "bench_memory"),
              "settings": ("training_benchmarks", "bench_settings"),
              "contrastive": ("embedding_benchmarks", "bench_contrastive"),
              "tta": ("tta_benchmarks", "bench_tta"),
              "dpo": ("dpo_benchmarks", "bench_dpo")}


def benchmark(name: str):
    import importlib

    module, function = BENCHMARKS[name]
    return getattr(importlib.import_module(module), function)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Shorter runs (a few minutes in all).")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                   help="Folder with sst2/, wikitext2/, alpaca/, preference/ (default: ../shared/data beside the "
                        "repository).")
    p.add_argument("--out", default="bench.json", help="Where to write the JSON (default: bench.json).")
    p.add_argument("--only", default=None, help=f"Comma-separated subset of: {', '.join(BENCHMARKS)}.")
    p.add_argument("--work-dir", default=None, help="Scratch directory for runs and caches (default: a temporary "
                                                    "one, removed afterwards).")
    p.add_argument("--tta-rows", type=int, default=None, help="tta: SST-2 training rows on both sides (default "
                                                                 "8,000; --quick: 2,000).")
    p.add_argument("--tta-rounds", type=int, default=1, help="tta: alternating rounds of both sides (default 1).")
    p.add_argument("--tta-seeds", default=None, help="tta: comma-separated seeds, one round each on both sides; "
                   "accuracies compared as means over them (replaces --tta-rounds).")
    p.add_argument("--tta-model", default=None, help="tta: a model directory for both sides instead of MiniLM-L6 "
                                                     "(a tiny model for a quick check).")
    p.add_argument("--dpo-pairs", type=int, default=None, help="dpo: preference pairs on both sides (default 64; "
                                                                 "--quick: 32).")
    p.add_argument("--dpo-rounds", type=int, default=1, help="dpo: alternating rounds of both sides (default 1).")
    p.add_argument("--dpo-model", default=None, help="dpo: a model directory for both sides instead of the config's "
                                                     "SmolLM2 GGUF (a tiny model for a quick check).")
    p.add_argument("--dpo-precision", choices=("fp32", "bf16"), default=None,
                   help="dpo: precision of both sides (default: the config's auto, resolved for this machine).")
    p.add_argument("--memory-kinds", default=",".join(MEMORY_KINDS),
                   help="memory: comma-separated comparisons: minilm (finetune / adapter / distill on MiniLM vs the "
                        "plain loop), sft (SmolLM2-135M SFT on Alpaca vs a plain SFT loop); default both.")
    p.add_argument("--memory-sft-model", default=None, help="memory, sft: a causal-LM directory for both sides instead "
                                                            "of the config's SmolLM2 GGUF (a tiny model for a quick "
                                                            "check).")
    p.add_argument("--memory-sft-steps", type=int, default=None, help="memory, sft: optimizer steps on both sides "
                                                                      "(default 10; --quick: 3).")
    p.add_argument("--memory-precision", choices=("fp32", "bf16"), default=None,
                   help="memory: precision of both sides of every comparison (default: auto, resolved for this "
                        "machine).")
    args = p.parse_args(argv)
    if args.tta_rows is not None and args.tta_rows < 1 or args.tta_rounds < 1:
        p.error(f"--tta-rows / --tta-rounds: expected a positive number; got {args.tta_rows} / {args.tta_rounds}")
    if args.dpo_pairs is not None and args.dpo_pairs < 1 or args.dpo_rounds < 1:
        p.error(f"--dpo-pairs / --dpo-rounds: expected a positive number; got {args.dpo_pairs} / {args.dpo_rounds}")
    args.memory_kinds = tuple(args.memory_kinds.split(","))
    unknown = [k for k in args.memory_kinds if k not in MEMORY_KINDS]
    if unknown or args.memory_sft_steps is not None and args.memory_sft_steps < 1:
        p.error(f"--memory-kinds / --memory-sft-steps: expected some of {', '.join(MEMORY_KINDS)} / a positive "
                f"number; got {','.join(args.memory_kinds)} / {args.memory_sft_steps}")
    args.groups = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [g for g in args.groups if g not in BENCHMARKS]
    if unknown:
        p.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if not (Path(args.data_dir) / "sst2" / "train.tsv").is_file():
        p.error(f"--data-dir: {args.data_dir} has no sst2/train.tsv; point it at the shared data folder")
    return args


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    report = {"mode": "quick" if args.quick else "full", "data_dir": str(Path(args.data_dir).resolve()),
              "machine": machine_info(), "results": [], "errors": {}, "seconds": {}}
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="llmkit-bench-")))
        ctx = Context(data_dir=Path(args.data_dir), quick=args.quick, work_dir=work, tta_rows=args.tta_rows,
                      tta_rounds=args.tta_rounds, tta_model=args.tta_model,
                      tta_seeds=[int(x) for x in args.tta_seeds.split(",") if x.strip()] if args.tta_seeds else None,
                      dpo={"pairs": args.dpo_pairs, "rounds": args.dpo_rounds, "model": args.dpo_model,
                           "precision": args.dpo_precision},
                      memory={"kinds": args.memory_kinds, "sft_model": args.memory_sft_model,
                              "sft_steps": args.memory_sft_steps, "precision": args.memory_precision})
        for name in args.groups:
            log.info("== %s", name)
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(sys.stderr):  # recipes print progress; stdout is the JSON's
                    report["results"] += benchmark(name)(ctx)
            except Exception as e:  # one broken benchmark must not lose the others' figures
                log.exception("%s failed", name)
                report["errors"][name] = f"{type(e).__name__}: {e}"
            report["seconds"][name] = round(time.perf_counter() - t0, 1)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    report["summary"] = {r["name"]: {k: r[k] for k in ("value", "unit", "ratio", "paired_ratio", "target",
                                                        "meets_target") if k in r} for r in report["results"]}
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    log.info("wrote %s (%.0f s)", args.out, report["total_seconds"])
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
