"""Shared pieces of the benchmark suite: the context every benchmark gets, its result record, machine facts,
and timing helpers (paired, alternating measurements after a warm-up, so ratios hold on a noisy machine)."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench")


@dataclass
class Context:
    """What every benchmark gets: where the data is, quick or full, a scratch directory for runs and caches, and
    the `tta` group's own settings (training rows, rounds, a model directory instead of MiniLM-L6), the `dpo`
    group's and the `memory` group's."""

    data_dir: Path
    quick: bool
    work_dir: Path
    tta_rows: int | None = None
    tta_rounds: int = 1
    tta_model: str | None = None
    tta_seeds: list[int] | None = None  # one round per seed on both sides (tta_benchmarks.py)
    dpo: dict | None = None  # the dpo group's settings (dpo_benchmarks.DpoOptions)
    memory: dict | None = None  # the memory group's settings (training_benchmarks.MemoryOptions)

    def path(self, *parts: str) -> Path:
        p = self.work_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def result(name: str, value: float, unit: str, *, baseline: float | None = None, baseline_name: str | None = None,
           target: str | None = None, meets: bool | None = None, settings: dict | None = None,
           **extra: Any) -> dict:
    """One figure: its value, its baseline and the ratio (value / baseline), the target and whether it is met."""
    record = {"name": name, "value": round(value, 4), "unit": unit}
    if baseline is not None:
        record.update(baseline=round(baseline, 4), baseline_name=baseline_name,
                      ratio=round(value / baseline, 4) if baseline else None)
    if target is not None:
        record.update(target=target, meets_target=meets)
    record["settings"] = settings or {}
    record.update(extra)
    return record


def machine_info() -> dict:
    import torch

    from llmkit.config.training_arguments import cpu_bf16_speedup, cpu_has_fast_bf16, resolve_precision

    return {"cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_bf16": cpu_has_fast_bf16(), "cpu_bf16_matmul_speedup": cpu_bf16_speedup(),
            "precision_auto": resolve_precision("auto"), "cuda": torch.cuda.is_available(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def alternate(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each variant once as a warm-up, then `rounds` times in turn (A B A B ...); their figures per round."""
    for name, fn in variants.items():
        log.info("warm-up: %s", name)
        fn()
    out: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            out[name].append(fn())
            log.info("round %d %s: %.4g", r + 1, name, out[name][-1])
    return out


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-round ratios a/b (steadier than a ratio of medians when the machine is busy)."""
    return statistics.median(x / y for x, y in zip(a, b))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[bench %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def median(values: list[float]) -> float:
    return statistics.median(values)

