"""Training benchmarks: llmkit's training loop against a hand-written PyTorch AdamW loop on the same model,
batches, sequence length, precision and threads; bf16 autocast against fp32; model FLOPs utilisation against
the measured matmul peak; evaluation against a plain `model(**batch)` loop.

The llmkit side is the real recipe (`finetune.run` / `pretrain.run` with `train.max_steps`), its figure the
run's own `train_tokens_per_second` (non-padding tokens over the wall time of `trainer.train()`). The plain
side is the loop a user writes: a shuffled DataLoader with the same collator, forward, backward, gradient
clipping at 1.0 (the Trainer's default), the same AdamW implementation the Trainer picks (fused on CPU), timed
from building the optimizer and DataLoader to the last step.

The memory group measures each side's peak RSS in its own process: llmkit finetune / adapter / distill on MiniLM
against classification_plain, and (peak_rss_sft) llmkit finetune on configs/finetune/smollm2-alpaca.yaml against
sft_plain, a hand-written SFT loop on the same model directory and tokenized examples. Run only that one with
`python scripts/bench/bench.py --only memory --memory-kinds sft` (--memory-sft-model DIR: a tiny model instead).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import REPO, Context, alternate, log, paired_ratio, result
from data_benchmarks import MINILM, head_lines, sst2_train

GPT_TINY = {"family": "gpt2", "num_layers": 4, "hidden_size": 256, "num_heads": 4, "max_position_embeddings": 256}
SFT_CONFIG = REPO / "configs" / "finetune" / "smollm2-alpaca.yaml"  # the memory group's SFT recipe
MEMORY_KINDS = ("minilm", "sft")


@dataclass
class MemoryOptions:
    """The memory group's own settings (bench.py sets them as ctx.memory): which comparisons run (minilm: finetune /
    adapter / distill on MiniLM; sft: SFT of a causal LM), a model directory for the sft comparison instead of the
    config's SmolLM2 GGUF, its optimizer steps (None: 10, --quick 3), fp32 / bf16 (None: auto, resolved here)."""

    kinds: tuple[str, ...] = MEMORY_KINDS
    sft_model: str | None = None
    sft_steps: int | None = None
    precision: str | None = None


# ---------------------------------------------------------------- llmkit side


def finetune_config(ctx: Context, train_file: Path, steps: int | None, precision: str, name: str,
                    validation: bool = False, epochs: float = 1.0) -> dict:
    train = {"learning_rate": 1e-4, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128,
             "weight_decay": 0.01, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10,
             "precision": precision, "seed": 42, "disable_tqdm": True, "num_train_epochs": epochs}
    if steps:
        train["max_steps"] = steps
    data = {"train_file": str(train_file), "text_column": "sentence", "label_column": "label",
            "label_names": ["negative", "positive"], "max_length": 64, "cache_dir": str(ctx.path("cache"))}
    if validation:
        data["validation_file"] = str(ctx.data_dir / "sst2" / "dev.tsv")
    return {"model": {"name_or_path": MINILM}, "task": {"type": "sequence-classification"}, "data": data,
            "train": train, "output_dir": str(ctx.path("runs", name))}


def long_rows(ctx: Context) -> Path:
    """SST-2 training phrases joined 8 at a time: rows of about 128 MiniLM tokens (for speed, not accuracy)."""
    out = ctx.path("data", "sst2-long.tsv")
    if not out.exists():
        lines = (ctx.data_dir / "sst2" / "train.tsv").read_text().splitlines()[1:4001]
        phrases = [line.split("\t") for line in lines]
        rows = [" ".join(p[0] for p in phrases[i:i + 8]) + "\t" + phrases[i][1] for i in range(0, len(phrases), 8)]
        out.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return out


def run_finetune(config: dict) -> dict:
    from llmkit.config import load_config
    from llmkit.recipes.finetune import FinetuneConfig, run

    return run(load_config(FinetuneConfig, None, data=config), overwrite=True)


def sft_config(ctx: Context, steps: int, precision: str, model: str | None, name: str = "memory-sft") -> dict:
    """configs/finetune/smollm2-alpaca.yaml for a short run: `steps` optimizer steps (the config's batch 4 x
    gradient accumulation 2), data from ctx.data_dir, twice the training examples the steps take (the Trainer's
    seeded shuffle picks which are fed; the plain loop follows the same order), no validation split (so no evaluation
    before, during or after training), no checkpoints, 8 new tokens per sample generation, the given precision and,
    with `model`, that directory (its own tokenizer and chat template) instead of the SmolLM2 GGUF."""
    import yaml

    config = yaml.safe_load(SFT_CONFIG.read_text())
    if model:
        config["model"] = {"name_or_path": model}
    train = config["train"]
    examples = steps * train["per_device_train_batch_size"] * train.get("gradient_accumulation_steps", 1)
    config["data"].pop("validation_split", None)
    config["data"].update(data_dir=str(ctx.data_dir), max_train_samples=2 * examples, cache_dir=str(ctx.path("cache")))
    train.update(max_steps=steps, save_strategy="no", eval_strategy="no", eval_on_start=False, precision=precision,
                 disable_tqdm=True)
    config["task"]["sample_max_new_tokens"] = 8
    config["output_dir"] = str(ctx.path("runs", name))
    return config


def pretrain_config(ctx: Context, tokenizer: str | None, steps: int, precision: str, name: str) -> dict:
    # a slice of WikiText-2: enough blocks for the steps, fast to prepare
    lines = head_lines(ctx, ctx.data_dir / "wikitext2" / "train.txt", 12000, "wikitext2-train-head-12000.txt")
    return {"model": {"from_config": GPT_TINY},
            "tokenizer": {"name_or_path": tokenizer} if tokenizer else {"train": {"type": "bpe", "vocab_size": 8000}},
            "data": {"train_file": str(lines), "cache_dir": str(ctx.path("cache"))},
            "pretrain": {"objective": "clm", "block_size": 256, "documents": "line"},
            "train": {"max_steps": steps, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
                      "weight_decay": 0.1, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10,
                      "precision": precision, "seed": 42, "disable_tqdm": True},
            "output_dir": str(ctx.path("runs", name))}


def run_pretrain(config: dict) -> dict:
    from llmkit.config import load_config
    from llmkit.recipes.pretrain import PretrainConfig, run

    return run(load_config(PretrainConfig, None, data=config), overwrite=True)


# ---------------------------------------------------------------- plain side


def plain_loop(model: Any, dataset: Any, collate: Any, batch_size: int, steps: int, precision: str, lr: float,
               weight_decay: float, seed: int, loss_fn: Any = None) -> float:
    """Non-padding tokens per second of a hand-written AdamW loop (fused AdamW, as the Trainer uses on CPU)."""
    import torch
    from torch.utils.data import DataLoader

    from llmkit.training.dropout import CpuDropout

    start = time.perf_counter()
    generator = torch.Generator()
    generator.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    model.train()
    tokens = step = 0
    while step < steps:
        for batch in loader:
            with CpuDropout():  # the dropout llmkit trains with (train.cpu_dropout=fast), so the ratio is the loop's
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            mask = batch.get("attention_mask")
            tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            step += 1
            if step == steps:
                break
    return tokens / (time.perf_counter() - start)


def classification_plain(config: dict, steps: int, precision: str) -> float:
    """The plain loop on the finetune config's own prepared data (from llmkit's cache) and a fresh model."""
    from transformers import DataCollatorWithPadding

    from llmkit.config import load_config
    from llmkit.data.classification import prepare_classification_data
    from llmkit.models.loading import load_model, load_tokenizer
    from llmkit.recipes.finetune import FinetuneConfig
    from llmkit.training.arguments import cpu_training_attention, pad_multiple

    cfg = load_config(FinetuneConfig, None, data=config)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    data = prepare_classification_data(cfg.data, tokenizer, False, cfg.train.seed)
    model, _ = load_model("AutoModelForSequenceClassification", cfg.model, tokenizer, num_labels=2)
    cpu_training_attention(model, None, precision, "cpu", "fast")  # the attention llmkit trains with: same model
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(precision, "cpu"))
    return plain_loop(model, data.splits["train"], collate, 32, steps, precision, 1e-4, 0.01, 42)


def sft_plain(config: dict, steps: int, precision: str) -> dict:
    """The SFT loop a user writes, on the sft config's own prepared data (llmkit's tokenized examples, from its
    cache) and the same model directory llmkit loads (model_source: the converted GGUF, or model.name_or_path);
    what it fed (steps, examples, tokens, positions, the last loss), the model directory and the attention of each
    side.

    Per optimizer step it feeds the same examples as llmkit (the Trainer shuffles with torch.randperm from a
    generator seeded with train.seed; gradient_accumulation_steps micro-batches of per_device_train_batch_size
    examples each). llmkit packs each micro-batch padding-free into one row (task.packing: true; position ids
    restart per example, no attention mask); this loop pads it on the right to its longest example, with an
    attention mask, so it computes on more positions for the same real tokens. Labels are llmkit's (-100 on the
    prompt tokens) and -100 on the padding. AdamW (fused, the Trainer's default adamw_torch_fused) at the config's
    learning rate and weight decay, gradient clipping at train.max_grad_norm, bf16 autocast when precision is bf16,
    constant learning rate (the schedule costs no memory). The model keeps the attention it loads with (SDPA), as
    a user's would; llmkit trains with the attention cpu_training_attention picks (SDPA on packed rows)."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from transformers import AutoModelForCausalLM

    from llmkit.config import load_config
    from llmkit.models.loading import load_tokenizer, model_source
    from llmkit.recipes.finetune import FinetuneConfig
    from llmkit.tasks.strategies import task_for
    from llmkit.training.arguments import attention_implementation, eager_attention_reason, packed_rows

    cfg = load_config(FinetuneConfig, None, data=config)
    seed = cfg.train.seed
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    train = task_for(cfg).prepare(tokenizer, seed).splits["train"]  # input_ids + labels, as llmkit trains them
    path = model_source(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(path)
    llmkit_attention = "eager" if eager_attention_reason(model, cfg.model.attn_implementation, precision, "cpu",
                                                         cfg.train.cpu_dropout, packed_rows(cfg)) \
        else attention_implementation(model)
    pad = tokenizer.pad_token_id

    def collate(rows: list[dict]) -> dict:
        longest = max(len(r["input_ids"]) for r in rows)
        batch = {"input_ids": torch.full((len(rows), longest), pad), "labels": torch.full((len(rows), longest), -100),
                 "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long)}
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            batch["labels"][i, :n] = torch.tensor(r["labels"])
            batch["attention_mask"][i, :n] = 1
        return batch

    micro, accumulation = cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    loader = iter(DataLoader(Subset(train, order), batch_size=micro, collate_fn=collate))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
                                  fused=True)
    model.train()
    fed = {"steps": 0, "examples": 0, "tokens": 0, "tokens_not_pad_id": 0, "positions": 0,
           "longest_micro_batch": [0, 0]}
    loss = None
    for _ in range(steps):
        for _ in range(accumulation):
            batch = next(loader, None)
            if batch is None:
                raise RuntimeError(f"sft_plain: {len(train)} training examples are fewer than {steps} steps x {micro} "
                                   f"x {accumulation} take")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**batch).loss / accumulation
            loss.backward()
            ids = batch["input_ids"]
            fed["examples"] += len(ids)
            fed["tokens"] += int(batch["attention_mask"].sum())
            fed["tokens_not_pad_id"] += int((ids != pad).sum())  # how the Trainer counts a packed row (no mask)
            fed["positions"] += ids.numel()
            fed["longest_micro_batch"] = max(fed["longest_micro_batch"], list(ids.shape), key=lambda s: s[0] * s[1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        fed["steps"] += 1
    fed.update(last_loss=float(loss) * accumulation, model_dir=str(path),
               attention={"llmkit": llmkit_attention, "plain": attention_implementation(model)})
    return fed


def causal_plain(config: dict, tokenizer_dir: str, steps: int, precision: str) -> tuple[float, Any]:
    """The plain loop for the tiny GPT-2: the same model config, blocks of 256 tokens of the same text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.config import load_config
    from llmkit.models.loading import build_model_config
    from llmkit.recipes.pretrain import PretrainConfig
    from llmkit.training.arguments import cpu_training_attention

    cfg = load_config(PretrainConfig, None, data=config)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_config(build_model_config(cfg.model.from_config, tokenizer))
    cpu_training_attention(model, None, precision, "cpu", "fast")
    text = Path(config["data"]["train_file"]).read_text().splitlines()
    ids = [t for line in text if line.strip() for t in tokenizer(line)["input_ids"] + [tokenizer.eos_token_id]]
    blocks = torch.tensor(ids[:len(ids) // 256 * 256]).view(-1, 256)
    dataset = [{"input_ids": b} for b in blocks]

    def collate(rows):
        return {"input_ids": torch.stack([r["input_ids"] for r in rows])}

    def loss_fn(m, batch):
        logits = m(input_ids=batch["input_ids"]).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                                 batch["input_ids"][:, 1:].reshape(-1))

    return plain_loop(model, dataset, collate, 16, steps, precision, 1e-3, 0.1, 42, loss_fn), model


# ---------------------------------------------------------------- benchmarks


def bench_training_loop(ctx: Context) -> list[dict]:
    """llmkit finetune (MiniLM, SST-2) and llmkit pretrain (tiny GPT-2, WikiText-2) vs the plain loop, alternating
    after a warm-up; target >= 0.95."""
    from llmkit.config.training_arguments import resolve_precision

    precision = resolve_precision("auto")
    rounds, steps = (1, 20) if ctx.quick else (3, 60)
    records = []

    train_file = sst2_train(ctx, 4000)
    config = finetune_config(ctx, train_file, steps, precision, "overhead-finetune")
    ours, plain = [], []
    log.info("training loop, finetune: warm-up")
    run_finetune({**config, "train": {**config["train"], "max_steps": 5}})
    classification_plain(config, 5, precision)
    for r in range(rounds):
        ours.append(run_finetune(config)["train_tokens_per_second"])
        plain.append(classification_plain(config, steps, precision))
        log.info("round %d: llmkit %.0f, plain %.0f tokens/s", r + 1, ours[-1], plain[-1])
    ratio = paired_ratio(ours, plain)
    records.append(result("training_loop_finetune", sorted(ours)[len(ours) // 2], "tokens/s",
                          baseline=sorted(plain)[len(plain) // 2], baseline_name="hand-written AdamW loop",
                          target=">= 0.95", meets=ratio >= 0.95, paired_ratio=round(ratio, 4),
                          settings={"model": "MiniLM-L6 (sequence classification)", "data": "SST-2 train, first "
                                    "4,000 rows, max_length 64, dynamic padding", "batch": 32, "steps": steps,
                                    "precision": precision, "rounds": rounds, "per_round": {"llmkit": ours,
                                                                                             "plain": plain}}))

    log.info("training loop, pretrain: warm-up (trains the BPE tokenizer)")
    first = pretrain_config(ctx, None, 3, precision, "overhead-pretrain-warmup")
    run_pretrain(first)
    tokenizer_dir = str(ctx.path("runs", "overhead-pretrain-warmup", "model"))
    steps = 10 if ctx.quick else 40
    config = pretrain_config(ctx, tokenizer_dir, steps, precision, "overhead-pretrain")
    causal_plain(config, tokenizer_dir, 3, precision)
    ours, plain = [], []
    model = None
    for r in range(rounds):
        ours.append(run_pretrain(config)["train_tokens_per_second"])
        tps, model = causal_plain(config, tokenizer_dir, steps, precision)
        plain.append(tps)
        log.info("round %d: llmkit %.0f, plain %.0f tokens/s", r + 1, ours[-1], plain[-1])
    ratio = paired_ratio(ours, plain)
    llmkit_tps = sorted(ours)[len(ours) // 2]
    records.append(result("training_loop_pretrain", llmkit_tps, "tokens/s",
                          baseline=sorted(plain)[len(plain) // 2], baseline_name="hand-written AdamW loop",
                          target=">= 0.95", meets=ratio >= 0.95, paired_ratio=round(ratio, 4),
                          settings={"model": "GPT-2 4 x 256 from config, BPE 8,000", "data": "WikiText-2 train "
                                    "(first 12,000 lines), packed blocks of 256", "batch": 16, "steps": steps,
                                    "precision": precision, "rounds": rounds,
                                    "per_round": {"llmkit": ours, "plain": plain}}))
    records.append(mfu(model, llmkit_tps, precision, block=256, quick=ctx.quick))
    return records


def matmul_peak(precision: str, quick: bool) -> float:
    """Measured FLOP/s of a square matmul at this precision (the machine's practical peak)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 10 if quick else 30
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * n ** 3 / best


def mfu(model: Any, tokens_per_second: float, precision: str, block: int, quick: bool) -> dict:
    """Model FLOPs utilisation: (6 N + 12 L d T) FLOPs per token (PaLM's count; N = non-embedding parameters plus
    the LM-head matmul, which runs even when tied) x tokens/s, over the machine's best measured matmul peak (the
    higher of fp32's and bf16's: on a CPU whose bf16 matmuls are slower than fp32's, fp32 is the ceiling); also
    against the peak of the precision the run used."""
    config = model.config
    embedding = sum(p.numel() for name, p in model.named_parameters() if "wte" in name or "wpe" in name)
    n = sum(p.numel() for p in model.parameters()) - embedding + config.vocab_size * config.n_embd
    per_token = 6 * n + 12 * config.n_layer * config.n_embd * block
    peaks = {name: matmul_peak(name, quick) for name in ("fp32", "bf16")}
    best = max(peaks.values())
    achieved = per_token * tokens_per_second
    return result("model_flops_utilisation", achieved / best, "fraction (of the best matmul peak)",
                  of_run_precision_peak=round(achieved / peaks["bf16" if precision == "bf16" else "fp32"], 4),
                  settings={"flops_per_token": per_token, "achieved_flops_per_second": round(achieved),
                            "matmul_peak_flops_per_second": {k: round(v) for k, v in peaks.items()},
                            "precision": precision,
                            "model": "GPT-2 4 x 256 (training_loop_pretrain's llmkit figure)"})


def bench_precision(ctx: Context) -> list[dict]:
    """bf16 autocast vs fp32 on MiniLM classification: tokens/s alternating, and the SST-2 dev accuracy of each
    after the same training budget. Compared explicitly, whatever `precision: auto` resolves to on this machine
    (recorded as auto_resolves_to): where auto picks fp32, this says what bf16 would have cost."""
    from llmkit.config.training_arguments import resolve_precision

    auto = resolve_precision("auto")
    rounds, steps = (1, 15) if ctx.quick else (2, 40)
    records = []
    # The 1.8 x target is checked on rows of ~128 tokens (8 consecutive SST-2 phrases joined; 128 is also the
    # sequence length of transformers' GLUE example), at batch 16 and 32. SST-2's own rows are short phrases
    # (~13 tokens): there a step is small, and the work per parameter (clipping, AdamW over 22.7 M parameters,
    # half of them the embedding matrix, and autocast's weight casts, fp32 or extra in bf16) weighs most; that
    # variant is reported without the target, and the bare_step records measure why. Every variant runs the
    # same number of steps: the one-off cost of starting train() (~1 s) would otherwise weigh more on the faster
    # bf16 runs.
    variants = [("sst2_phrases", sst2_train(ctx, 4000), 32), ("rows_of_128_tokens", long_rows(ctx), 16)]
    if not ctx.quick:
        variants.append(("rows_of_128_tokens_batch_32", long_rows(ctx), 32))
    for label, train_file, batch in variants:
        n = steps
        config = finetune_config(ctx, train_file, n, "auto", f"precision-speed-{label}")
        config["train"]["per_device_train_batch_size"] = batch
        config["data"]["max_length"] = 128
        speed: dict[str, list[float]] = {"bf16": [], "fp32": []}
        run_finetune({**config, "train": {**config["train"], "max_steps": 3, "precision": "fp32"}})  # warm-up
        for _ in range(rounds):
            for p in ("bf16", "fp32"):
                speed[p].append(run_finetune({**config, "train": {**config["train"], "precision": p}})[
                    "train_tokens_per_second"])
        ratio = paired_ratio(speed["bf16"], speed["fp32"])
        targeted = label.startswith("rows_of_128_tokens")
        records.append(result(f"mixed_precision_speedup_{label}", ratio, "x (bf16 autocast / fp32 tokens/s, paired)",
                              target=">= 1.8" if targeted else None, meets=ratio >= 1.8,
                              settings={"auto_resolves_to": auto, "per_round": speed, "steps": n, "batch": batch,
                                        "model": "MiniLM-L6", "data": label.replace("_", " ")},
                              **({} if targeted else {"note": "short steps: see mixed_precision_bare_step_32x16"})))
    records.extend(bare_step(quick=ctx.quick))
    records.append(dropout_op(quick=ctx.quick))
    records.append(padding_to_eight(quick=ctx.quick))
    budget = 2000 if ctx.quick else 8000
    accuracy = {}
    for p in ("bf16", "fp32"):
        cfg = finetune_config(ctx, sst2_train(ctx, budget), None, p, f"precision-accuracy-{p}", validation=True)
        accuracy[p] = run_finetune(cfg)["eval_accuracy"]
    gap = abs(accuracy["bf16"] - accuracy["fp32"]) * 100
    return records + [
            result("mixed_precision_accuracy_gap", gap, "points (|bf16 - fp32| dev accuracy)", target="<= 0.5",
                   meets=gap <= 0.5, settings={"accuracy": accuracy, "auto_resolves_to": auto,
                                               "budget": f"{budget} SST-2 training rows, 1 epoch, batch 32, lr 1e-4, "
                                                         "seed 42", "eval": "872 SST-2 dev sentences"})]


def bare_step(quick: bool) -> list[dict]:
    """What bounds bf16's gain on MiniLM, from a bare training step outside llmkit (fixed batch, no padding,
    fused AdamW, clipping; scripts/bench/compile_step.py):

    - 16 x 128: fp32 / bf16 seconds per step with torch's dropout, llmkit's CpuDropout and dropout off. torch's
      CPU dropout draws one random number per element (the attention probabilities alone are 16 x 12 x 128 x 128
      per layer) and takes as long in bf16 as in fp32.
    - 32 x 16 (SST-2's phrases are ~13 tokens): the share of the step spent on clipping, the optimizer step and
      zero_grad, which work per parameter (22.7 M, half of them the embedding matrix) in fp32 whatever the
      precision of the forward and backward passes.
    """
    from compile_step import random_batch, seconds_per_step

    from llmkit.models.resolve import resolve_model_path

    path = resolve_model_path(MINILM)
    warm, timed_steps = (2, 4) if quick else (3, 10)
    long_batch, short_batch = random_batch(16, 128), random_batch(32, 16)
    times = {f"{p}_{d}": seconds_per_step(path, long_batch, p, dropout=d, warm_up=warm, steps=timed_steps)
             for d in ("torch", "fast", "off") for p in ("fp32", "bf16")}
    ratio = {d: times[f"fp32_{d}"].step / times[f"bf16_{d}"].step for d in ("torch", "fast", "off")}
    share = {d: 1 - times["bf16_off"].step / times[f"bf16_{d}"].step for d in ("torch", "fast")}
    log.info("bare step 16 x 128: bf16/fp32 speed-up %.2f x with torch's dropout, %.2f x with llmkit's, %.2f x "
             "without; dropout is %.0f %% / %.0f %% of the bf16 step", ratio["torch"], ratio["fast"], ratio["off"],
             100 * share["torch"], 100 * share["fast"])
    short = {p: seconds_per_step(path, short_batch, p, warm_up=warm, steps=3 * timed_steps) for p in ("fp32", "bf16")}
    update_share = {p: short[p].update / short[p].step for p in short}
    log.info("bare step 32 x 16: bf16/fp32 speed-up %.2f x; clipping + optimizer + zero_grad are %.0f %% of the "
             "fp32 step, %.0f %% of the bf16 step", short["fp32"].step / short["bf16"].step,
             100 * update_share["fp32"], 100 * update_share["bf16"])
    return [
        result("mixed_precision_bare_step_16x128", ratio["fast"], "x (fp32 / bf16 seconds per bare step, llmkit's "
               "dropout)", with_torch_dropout=round(ratio["torch"], 3), without_dropout=round(ratio["off"], 3),
               dropout_share_of_bf16_step={d: round(v, 3) for d, v in share.items()}, settings={
                   "seconds_per_step": {k: round(v.step, 4) for k, v in times.items()}, "batch": "16 x 128, no padding",
                   "model": "MiniLM-L6", "steps": timed_steps, "warm_up": warm}),
        result("mixed_precision_bare_step_32x16", short["fp32"].step / short["bf16"].step,
               "x (fp32 / bf16 seconds per bare step, llmkit's dropout)",
               update_share_of_step={p: round(v, 3) for p, v in update_share.items()}, settings={
                   "seconds_per_step": {p: round(t.step, 4) for p, t in short.items()},
                   "update_seconds_per_step": {p: round(t.update, 4) for p, t in short.items()},
                   "batch": "32 x 16, no padding", "model": "MiniLM-L6", "steps": 3 * timed_steps, "warm_up": warm}),
    ]


def dropout_op(quick: bool) -> dict:
    """One dropout call, forward and backward, torch's vs llmkit's CpuDropout, on MiniLM's shapes at batch
    16 x 128 (attention probabilities 16 x 12 x 128 x 128, hidden states 16 x 128 x 384), p = 0.1."""
    import torch
    import torch.nn.functional as F

    from llmkit.training.dropout import cpu_dropout

    repeats = 5 if quick else 20

    def milliseconds(fn, x):
        grad = torch.ones_like(x)
        for _ in range(3):
            fn(x, 0.1).backward(grad)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x, 0.1).backward(grad)
        return 1000 * (time.perf_counter() - start) / repeats

    rows = {}
    for shape_name, shape in (("attention 16x12x128x128", (16, 12, 128, 128)), ("hidden 16x128x384", (16, 128, 384))):
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            rows[f"{shape_name} {str(dtype).removeprefix('torch.')}"] = {
                "torch_ms": round(milliseconds(F.dropout, x), 2), "llmkit_ms": round(milliseconds(cpu_dropout, x), 2)}
    speedups = [r["torch_ms"] / r["llmkit_ms"] for r in rows.values()]
    log.info("dropout forward + backward, torch vs llmkit: %s", rows)
    return result("cpu_dropout_op_speedup", min(speedups), "x (torch / llmkit ms per forward + backward, worst case)",
                  best=round(max(speedups), 3), settings={"ms": rows, "p": 0.1, "repeats": repeats})


def padding_to_eight(quick: bool) -> dict:
    """Whether padding batches to a multiple of 8 (what half precision on GPUs wants) pays in bf16 on this CPU:
    real tokens/s of a bare MiniLM step at a length and at that length rounded up to a multiple of 8."""
    from compile_step import random_batch, seconds_per_step

    from llmkit.models.resolve import resolve_model_path

    path = resolve_model_path(MINILM)
    warm, timed_steps = (2, 4) if quick else (3, 10)
    shapes = [(32, 13), (32, 21), (16, 121)]
    rows = {}
    for size, length in shapes:
        padded = -(-length // 8) * 8
        tokens_per_second = {
            name: size * length / seconds_per_step(path, random_batch(size, n), "bf16", warm_up=warm,
                                                   steps=timed_steps).step
            for name, n in (("unpadded", length), ("padded", padded))}
        rows[f"{size} x {length} -> {padded}"] = {k: round(v) for k, v in tokens_per_second.items()}
    ratios = {shape: round(r["padded"] / r["unpadded"], 3) for shape, r in rows.items()}
    log.info("bf16 padding to a multiple of 8: %s", rows)
    mean = math.prod(ratios.values()) ** (1 / len(ratios))
    return result("bf16_cpu_padding_to_multiple_of_8", mean, "x (real tokens/s padded / unpadded, geometric mean)",
                  ratios=ratios, settings={"tokens_per_second": rows, "model": "MiniLM-L6", "steps": timed_steps,
                                           "warm_up": warm, "llmkit": "pads to a multiple of 8 on GPUs only"})


def bench_eval(ctx: Context) -> list[dict]:
    """llmkit's evaluation loop vs a plain DataLoader + model(**batch) loop (scripts/bench/eval_throughput.py)."""
    import eval_throughput

    args = eval_throughput.parse_args(["--data-dir", str(ctx.data_dir), "--repeats", "1" if ctx.quick else "3"]
                                      + (["--max-examples", "256"] if ctx.quick else []))
    out = eval_throughput.measure(args)
    ratio = out["paired_ratio_llmkit_vs_plain"]
    return [result("eval_throughput", out["variants"]["llmkit"]["tokens_per_second"], "tokens/s",
                   baseline=out["variants"]["plain"]["tokens_per_second"],
                   baseline_name="plain DataLoader + model(**batch) in file order", target=">= 0.95",
                   meets=ratio >= 0.95, paired_ratio=ratio,
                   vs_sorted_plain=out["paired_ratio_llmkit_vs_sorted_plain"],
                   settings={k: out[k] for k in ("model", "examples", "batch_size", "precision", "repeats")})]


# The child process of bench_memory: one training run, writes its own peak RSS (VmHWM) and exits. The sft kinds
# also write what they fed (the plain loop's counts; llmkit's run metrics) to the peak file's name + ".json".
CHILD = """
import json, sys
sys.path.insert(0, {bench_dir!r})
import training_benchmarks as t
kind, config, steps, precision = sys.argv[1], json.loads(open(sys.argv[2]).read()), int(sys.argv[3]), sys.argv[4]
fed = None
if kind == "plain":
    t.classification_plain(config, steps, precision)
elif kind == "sft_plain":
    fed = t.sft_plain(config, steps, precision)
elif kind in ("finetune", "sft"):
    metrics = t.run_finetune(config)
    fed = metrics if kind == "sft" else None
else:
    from llmkit.config import load_config
    from llmkit.recipes import adapter, distill
    module, cls = (adapter, adapter.AdapterConfig) if kind == "adapter" else (distill, distill.DistillConfig)
    module.run(load_config(cls, None, data=config), overwrite=True)
# This process's own peak since exec (wait4's ru_maxrss would include the parent it was forked from).
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
open(sys.argv[5], "w").write(peak.split()[1])
if fed is not None:
    open(sys.argv[5] + ".json", "w").write(json.dumps(fed, default=str))
"""


def peak_rss_mb(ctx: Context, kind: str, config: dict, steps: int, precision: str) -> float:
    """Run one training in a child process; its peak resident set size (MB, /proc VmHWM since exec; Linux)."""
    import subprocess
    import sys

    path = ctx.path("memory", f"{kind}.json")
    path.write_text(json.dumps(config))
    peak = ctx.path("memory", f"{kind}.peak")
    code = CHILD.format(bench_dir=str(Path(__file__).resolve().parent))
    done = subprocess.run([sys.executable, "-c", code, kind, str(path), str(steps), precision, str(peak)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} child failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return int(peak.read_text()) / 1024  # kB -> MB


def child_output(ctx: Context, kind: str) -> dict:
    """What an sft child wrote beside its peak (CHILD)."""
    return json.loads(ctx.path("memory", f"{kind}.peak.json").read_text())


def memory_options(ctx: Context) -> MemoryOptions:
    opts = MemoryOptions(**(ctx.memory or {}))
    unknown = [k for k in opts.kinds if k not in MEMORY_KINDS]
    if unknown:
        raise ValueError(f"memory: unknown comparison(s) {', '.join(unknown)}; choose from {', '.join(MEMORY_KINDS)}")
    return opts


def bench_memory(ctx: Context) -> list[dict]:
    """Peak RSS of llmkit runs vs a hand-written loop, each in its own process, on the same model, data, batch,
    steps and precision: minilm, llmkit finetune / adapter (LoRA) / distill on MiniLM (SST-2); sft, llmkit finetune
    on configs/finetune/smollm2-alpaca.yaml (SmolLM2-135M-Instruct, Alpaca) vs a plain SFT loop (sft_plain)."""
    from llmkit.config.training_arguments import resolve_precision

    opts = memory_options(ctx)
    precision = opts.precision or resolve_precision("auto")
    records = []
    if "minilm" in opts.kinds:
        records += minilm_memory(ctx, precision)
    if "sft" in opts.kinds:
        records.append(sft_memory(ctx, opts.sft_steps or (3 if ctx.quick else 10), precision, opts.sft_model))
    return records


def sft_memory(ctx: Context, steps: int, precision: str, model: str | None) -> dict:
    """peak_rss_sft: llmkit finetune on the SmolLM2 SFT config (sft_config) vs sft_plain on the same model
    directory, tokenized examples (in the same order), batch, gradient accumulation, steps and precision."""
    from llmkit.config import load_config
    from llmkit.models.loading import model_source
    from llmkit.recipes.finetune import FinetuneConfig

    config = sft_config(ctx, steps, precision, model)
    model_source(load_config(FinetuneConfig, None, data=config).model)  # converts the GGUF here, not in a child
    for kind in ("sft_plain", "sft"):
        ctx.path("memory", f"{kind}.peak.json").unlink(missing_ok=True)  # a previous run's
    plain = peak_rss_mb(ctx, "sft_plain", config, steps, precision)  # first: it tokenizes into llmkit's cache
    ours = peak_rss_mb(ctx, "sft", config, steps, precision)
    fed_plain, metrics = child_output(ctx, "sft_plain"), child_output(ctx, "sft")
    train, data = config["train"], config["data"]
    batch, accumulation = train["per_device_train_batch_size"], train.get("gradient_accumulation_steps", 1)
    packed = config["task"].get("packing", True)
    source = config["model"]
    label = model or f"SmolLM2-135M-Instruct ({source['name_or_path']} {source['gguf_file']}, converted by llmkit)"
    attention = fed_plain.pop("attention")
    log.info("peak RSS, sft: llmkit %.0f MB, plain %.0f MB (%s)", ours, plain, label)
    return result(
        "peak_rss_sft", ours, "MB", baseline=plain,
        baseline_name="hand-written AdamW SFT loop (AutoModelForCausalLM, right-padded micro-batches; same process "
                      "layout)",
        fed={"llmkit": {k: metrics.get(k) for k in ("train_tokens", "train_loss", "epoch", "train_runtime")},
             "plain": fed_plain},
        settings={"model": label, "model_dir": fed_plain.pop("model_dir"), "batch": batch,
                  "gradient_accumulation_steps": accumulation, "steps": steps, "max_length": data["max_length"],
                  "precision": precision, "attention": attention, "learning_rate": train["learning_rate"],
                  "data": f"{data['train_file']} in {data['data_dir']}: {data['max_train_samples']} examples (seeded "
                          f"shuffle), the first {steps * batch * accumulation} of the Trainer's order fed on both "
                          "sides",
                  "feeds": {"llmkit": ("each micro-batch packed padding-free into one row (task.packing: position "
                                       "ids restart per example, no attention mask)" if packed else
                                       "each micro-batch padded to its longest example") +
                                      "; loss on response tokens only (-100 on prompt tokens); the config's recipe "
                                      "(cosine schedule, warm-up, sample generations before and after training, the "
                                      "model saved at the end)",
                            "plain": "the same examples per micro-batch, right-padded to the longest with an "
                                     "attention mask; llmkit's labels, -100 on padding; fused AdamW, clipping, "
                                     "constant learning rate, no saving"}})


def minilm_memory(ctx: Context, precision: str) -> list[dict]:
    """Peak RSS of llmkit finetune / adapter (LoRA) / distill runs vs the plain loop on the same MiniLM model,
    data, batch, steps and precision."""
    steps = 10 if ctx.quick else 40
    config = finetune_config(ctx, sst2_train(ctx, 4000), steps, precision, "memory-finetune")
    plain = peak_rss_mb(ctx, "plain", config, steps, precision)
    records = []
    finetune = peak_rss_mb(ctx, "finetune", config, steps, precision)
    lora = {**config, "adapter": {"method": "lora", "r": 8, "lora_alpha": 16,
                                  "target_modules": ["query", "key", "value", "dense"]},
            "output_dir": str(ctx.path("runs", "memory-lora"))}
    teacher = str(ctx.path("runs", "memory-finetune"))
    student = {k: v for k, v in config.items() if k != "model"}
    student.update(distill={"teacher": teacher, "student": {"from_teacher": {"every": 2}}},
                   output_dir=str(ctx.path("runs", "memory-distill")))
    settings = {"model": "MiniLM-L6", "batch": 32, "steps": steps, "precision": precision,
                "data": "SST-2 train, first 4,000 rows"}
    for name, kind, cfg in (("finetune", "finetune", config), ("adapter_lora", "adapter", lora),
                            ("distill", "distill", student)):
        value = finetune if kind == "finetune" else peak_rss_mb(ctx, kind, cfg, steps, precision)
        records.append(result(f"peak_rss_{name}", value, "MB", baseline=plain,
                              baseline_name="hand-written AdamW loop (same process layout)", settings=settings))
    return records


def bench_settings(ctx: Context) -> list[dict]:
    """The CPU settings issue 9 asks about, each against llmkit's default on the same finetune (MiniLM, SST-2,
    bf16 where fast), alternating: DataLoader workers, torch.compile, and the thread count."""
    import torch

    from llmkit.config.training_arguments import resolve_precision

    precision = resolve_precision("auto")
    rounds, steps = (1, 15) if ctx.quick else (2, 40)
    config = finetune_config(ctx, sst2_train(ctx, 4000), steps, "auto", "settings")
    threads = torch.get_num_threads()

    def variant(name: str, **train: Any):
        def run() -> float:
            return run_finetune({**config, "output_dir": str(ctx.path("runs", f"settings-{name}")),
                                 "train": {**config["train"], **train}})["train_tokens_per_second"]
        return run

    def one_thread() -> float:
        torch.set_num_threads(1)
        try:
            return variant("threads-1")()
        finally:
            torch.set_num_threads(threads)

    variants = {"default": variant("default"), "dataloader_num_workers_1": variant("workers", dataloader_num_workers=1),
                "torch_threads_1": one_thread}
    if not ctx.quick:  # compiling takes minutes per new shape on 2 cores
        variants["torch_compile"] = variant("compile", torch_compile=True)
    speed = alternate(variants, rounds)
    records = []
    for name, values in speed.items():
        if name == "default":
            continue
        ratio = paired_ratio(values, speed["default"])
        records.append(result(f"setting_{name}", ratio, "x (tokens/s vs llmkit's default, paired)",
                              settings={"default_threads": threads,
                                        "per_round": {"setting": values, "default": speed["default"]},
                                        "steps": steps, "precision": precision, "batch": 32,
                                        "model": "MiniLM-L6", "data": "SST-2 train, first 4,000 rows"}))
    return records
