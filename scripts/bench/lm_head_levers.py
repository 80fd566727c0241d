"""The pretraining step's levers of issue 26 (MFU), each measured on its own: the fused LM head and loss
(llmkit/training/fused_loss.py) on and off, crossed with GPT-2's activation (transformers' gelu_new, composed of
eight elementwise ops, or gelu_pytorch_tanh, the same function in one kernel, which `model.from_config` now picks).

    python scripts/bench/lm_head_levers.py [--steps 40] [--rounds 2] [--data-dir ../shared/data]

Every run is `llmkit pretrain` of the MFU benchmark's model (GPT-2 4 x 256 from config, BPE 8,000, blocks of 256,
batch 16, precision auto) on the first 12,000 lines of WikiText-2 train, in this process, the four variants
alternating round by round. Prints one JSON line per run (tokens/s of training, final training loss) and a
summary with each variant's tokens/s per round. On a shared machine compare the ratios, not the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, log, setup_logging  # noqa: E402
from training_benchmarks import GPT_TINY, run_pretrain  # noqa: E402

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


def config(lines: Path, tokenizer: str | None, steps: int, activation: str, out: Path) -> dict:
    return {"model": {"from_config": {**GPT_TINY, "extra": {"activation_function": activation}}},
            "tokenizer": {"name_or_path": tokenizer} if tokenizer else {"train": {"type": "bpe", "vocab_size": 8000}},
            "data": {"train_file": str(lines), "cache_dir": str(out / "cache")},
            "pretrain": {"objective": "clm", "block_size": 256, "documents": "line"},
            "train": {"max_steps": steps, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
                      "weight_decay": 0.1, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 10,
                      "precision": "auto", "seed": 42, "disable_tqdm": True},
            "output_dir": str(out / "run")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)
    setup_logging()
    import llmkit.training.fused_loss as fused_loss

    types = fused_loss.FUSED_MODEL_TYPES
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="lm-head-levers-") as tmp:
        out = Path(tmp)
        lines = out / "wikitext2-train-head-12000.txt"
        text = (args.data_dir / "wikitext2" / "train.txt").read_text(encoding="utf-8").splitlines()[:12000]
        lines.write_text("\n".join(text) + "\n", encoding="utf-8")
        log.info("warm-up: trains the BPE tokenizer")
        run_pretrain(config(lines, None, 3, ACTIVATIONS[0], out / "warm"))
        tokenizer = str(out / "warm" / "run" / "model")
        for r in range(args.rounds):
            for fused in (False, True):
                for activation in ACTIVATIONS:
                    fused_loss.FUSED_MODEL_TYPES = types if fused else frozenset()
                    try:
                        metrics = run_pretrain(config(lines, tokenizer, args.steps, activation, out))
                    finally:
                        fused_loss.FUSED_MODEL_TYPES = types
                    name = f"{'fused' if fused else 'logits'}_loss+{activation}"
                    results.setdefault(name, []).append(round(metrics["train_tokens_per_second"]))
                    print(json.dumps({"round": r + 1, "variant": name, **{k: metrics[k] for k in (
                        "train_tokens_per_second", "train_loss") if k in metrics}}), flush=True)
    summary = {"tokens_per_second": results, "steps": args.steps, "rounds": args.rounds}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
