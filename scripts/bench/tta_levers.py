"""The time-to-accuracy levers of issue 26, each measured on its own against the shipped SST-2 config.

    python scripts/bench/tta_levers.py [--rows 2000] [--rounds 1] [--only NAME,...] [--data-dir ../shared/data]

Every run is `llmkit finetune configs/finetune/minilm-sst2.yaml` in this process (finetune.run), on the first
N rows of SST-2 train (2,000 by default) and the whole dev set, with one setting changed. The baseline (the
shipped config unchanged) runs before every variant, so each variant is compared with the baseline run next to
it: train seconds (trainer.train()), the rest of the run (data from the cache, model load, evaluation of the dev
set, saving) and dev accuracy. Prints one
JSON line per variant and a summary line. On a shared machine compare the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, log, setup_logging  # noqa: E402

CONFIG = REPO / "configs" / "finetune" / "minilm-sst2.yaml"

# variant -> the settings it changes (train: keys, or section.key), each against the shipped config
VARIANTS = {
    "optim_adamw_torch_not_fused": {"optim": "adamw_torch"},
    "batch_64_lr_2e-4": {"per_device_train_batch_size": 64, "learning_rate": 2.0e-4},
    "batch_128_lr_4e-4": {"per_device_train_batch_size": 128, "learning_rate": 4.0e-4},
    "random_sampling": {"train_sampling_strategy": "random"},
    "precision_fp32": {"precision": "fp32"},
    "eval_batch_8": {"per_device_eval_batch_size": 8},
    "cpu_dropout_torch": {"cpu_dropout": "torch"},
    # the word embeddings (half of MiniLM's weights) frozen: no dense 30,522 x 384 gradient and AdamW update per step
    "freeze_embeddings": {"model.freeze_embeddings": True},
    "fp32_freeze_embeddings": {"precision": "fp32", "model.freeze_embeddings": True},
    # llmkit's code, not a setting ("patch:" sets a module attribute for the run): the word embeddings' dense
    # gradient allocated afresh each step, as before llmkit/training/embedding_grad.py
    "dense_embedding_gradient": {"patch:llmkit.training.embedding_grad.MIN_ELEMENTS": 1 << 62},
}
PATCH = "patch:"


def config(data_dir: Path, work: Path, train_file: Path, name: str, train: dict) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"].update(data_dir=str(data_dir), train_file=str(train_file), cache_dir=str(work / "cache"))
    cfg["train"].update(save_strategy="no", disable_tqdm=True)
    for key, value in train.items():  # "section.key" for another section, a plain key for train:
        if key.startswith(PATCH):
            continue
        section, _, name = key.rpartition(".")
        cfg.setdefault(section or "train", {})[name] = value
    cfg["output_dir"] = str(work / "runs" / name)
    return cfg


def run(cfg: dict, settings: dict | None = None) -> dict:
    import importlib

    from llmkit.config import load_config
    from llmkit.recipes.finetune import FinetuneConfig, run

    patches = [(key[len(PATCH):].rpartition("."), value) for key, value in (settings or {}).items()
               if key.startswith(PATCH)]
    saved = []
    for (module, _, name), value in patches:
        target = importlib.import_module(module)
        saved.append((target, name, getattr(target, name)))
        setattr(target, name, value)
    try:
        start = time.perf_counter()
        metrics = run(load_config(FinetuneConfig, None, data=cfg), overwrite=True)
        seconds = time.perf_counter() - start
    finally:
        for target, name, value in saved:
            setattr(target, name, value)
    return {"seconds": round(seconds, 2), "train_s": round(metrics["train_runtime"], 2),
            "other_s": round(seconds - metrics["train_runtime"], 2), "accuracy": round(metrics["eval_accuracy"], 4)}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--only", default=None, help=f"Comma-separated subset of: {', '.join(VARIANTS)}.")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(VARIANTS)
    with tempfile.TemporaryDirectory(prefix="llmkit-levers-") as tmp:
        work = Path(tmp)
        lines = (Path(args.data_dir) / "sst2" / "train.tsv").read_text().splitlines()[:args.rows + 1]
        train_file = work / "train.tsv"
        train_file.write_text("\n".join(lines) + "\n")
        run(config(Path(args.data_dir), work, train_file, "warm-up", {}))  # data cache, imports, page cache
        summary = {}
        for r in range(args.rounds):
            for name in names:
                base = run(config(Path(args.data_dir), work, train_file, "baseline", {}))
                variant = run(config(Path(args.data_dir), work, train_file, name, VARIANTS[name]), VARIANTS[name])
                row = {"variant": name, "round": r + 1, "settings": VARIANTS[name], "baseline": base,
                       "variant_result": variant, "train_ratio": round(variant["train_s"] / base["train_s"], 3),
                       "other_ratio": round(variant["other_s"] / base["other_s"], 3),
                       "accuracy_delta": round(variant["accuracy"] - base["accuracy"], 4)}
                print(json.dumps(row), flush=True)
                summary.setdefault(name, []).append(row["train_ratio"])
                log.info("%s: train x%.3f, rest x%.3f, accuracy %+.4f", name, row["train_ratio"], row["other_ratio"],
                         row["accuracy_delta"])
    print(json.dumps({"summary_train_ratio": summary, "rows": args.rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
