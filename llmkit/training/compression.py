"""What `llmkit compress` measures after every step: quality on the evaluation data (accuracy of a classifier,
perplexity of a causal LM), parameters, size on disk, CPU latency (batch 1) and throughput (batch 32), the
timings taken in one process for all stages, alternating, after warm-up; and the report (table and plot).

Modules that load torch are imported inside the functions that use them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.metrics.tables import markdown_table

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class EvalSet:
    """The evaluation data of one compress run, ready for the model: tokenized classification rows (with their
    labels) or the token ids of a text (causal LM), and the rows importance scoring learns from."""

    kind: str  # sequence-classification | causal-lm
    tokenizer: Any
    rows: list[dict] = field(default_factory=list)  # classification: input_ids, attention_mask, labels
    ids: list[int] = field(default_factory=list)  # causal-lm: the evaluation text's tokens
    train_rows: list[dict] = field(default_factory=list)  # for gradients: classification rows or LM windows
    label_names: list[str] = field(default_factory=list)
    window: int = 128  # causal-lm: tokens per window (perplexity, timing)
    batch_size: int = 32
    train_source: str = "data.train_file"  # the config key the importance rows came from

    def describe(self) -> str:
        if self.kind == "causal-lm":
            return f"{len(self.ids)} tokens (windows of {self.window})"
        return f"{len(self.rows)} rows"

    @property
    def metric(self) -> str:
        return "accuracy" if self.kind == "sequence-classification" else "perplexity"

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def collate(self, rows: list[dict]) -> dict:
        import torch
        from transformers import DataCollatorWithPadding

        if self.kind == "causal-lm":
            ids = torch.tensor([r["input_ids"] for r in rows])
            return {"input_ids": ids, "labels": ids.clone()}
        return DataCollatorWithPadding(self.tokenizer)(rows)

    def loss_batches(self, batches: int, size: int = 8) -> list[dict]:
        """The first `batches` batches of the training rows, with labels: what head and neuron importance
        is computed on."""
        rows = self.train_rows[: batches * size]
        return [self.collate(rows[i:i + size]) for i in range(0, len(rows), size)]

    def timing_batch(self, size: int) -> dict:
        """`size` evaluation inputs (without labels) for timing: the first rows, or windows of the text."""
        if self.kind == "causal-lm":
            step = self.window
            windows = [self.ids[i:i + step] for i in range(0, max(len(self.ids) - step, 0) + 1, step)][:size]
            rows = [{"input_ids": windows[i % len(windows)]} for i in range(size)]
        else:
            rows = [self.rows[i % len(self.rows)] for i in range(size)]
        batch = self.collate(rows)
        batch.pop("labels", None)
        return batch

    def quality(self, model: Any) -> float:
        """Accuracy on the evaluation rows, or perplexity of the evaluation text."""
        import torch

        model.eval()
        if self.kind == "causal-lm":
            from llmkit.metrics.perplexity import causal_lm_perplexity

            with torch.inference_mode():
                result = causal_lm_perplexity(model, self.ids, self.window, max(self.window // 2, 1), self.batch_size)
            return round(result.perplexity, 4)
        correct = 0
        with torch.inference_mode():
            for i in range(0, len(self.rows), self.batch_size):
                batch = self.collate(self.rows[i:i + self.batch_size])
                labels = batch.pop("labels")
                correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        return round(correct / max(len(self.rows), 1), 4)


@dataclass
class Stage:
    """The model after one step (or the original): what it is, where it was saved, and its figures."""

    name: str
    model: Any
    directory: Path | None
    quality: float
    parameters: int
    size_bytes: int | None = None
    latency_ms: float | None = None
    throughput: float | None = None
    notes: list[str] = field(default_factory=list)


def size_on_disk(directory: Path) -> int:
    """Bytes of the weight files of a saved model directory."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _time(model: Any, batch: dict, repeats: int) -> float:
    import torch

    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(repeats):
            model(**batch)
    return (time.perf_counter() - start) / repeats


def benchmark(stages: list[Stage], eval_set: EvalSet, rounds: int, repeats: int = 5) -> None:
    """Latency of batch 1 (ms) and throughput of batch 32 (examples/s, or tokens/s for a causal LM) of every
    stage on the CPU, in this one process: one warm-up pass each, then `rounds` rounds, each timing every stage in
    turn (so drift in the machine's speed hits all alike); the median round is kept."""
    one, many = eval_set.timing_batch(1), eval_set.timing_batch(32)
    per_example = many["input_ids"].shape[1] if eval_set.kind == "causal-lm" else 1
    for stage in stages:
        stage.model.eval()
        _time(stage.model, one, 1)
        _time(stage.model, many, 1)
    latencies: dict[int, list[float]] = {i: [] for i in range(len(stages))}
    throughputs: dict[int, list[float]] = {i: [] for i in range(len(stages))}
    for _ in range(rounds):
        for i, stage in enumerate(stages):
            latencies[i].append(_time(stage.model, one, repeats))
            throughputs[i].append(32 * per_example / _time(stage.model, many, 1))
    for i, stage in enumerate(stages):
        stage.latency_ms = round(1000 * statistics.median(latencies[i]), 3)
        stage.throughput = round(statistics.median(throughputs[i]), 1)


def rows(stages: list[Stage], eval_set: EvalSet) -> list[dict]:
    """One metrics.json row per stage, with its ratios to the original (the first stage)."""
    base = stages[0]
    out = []
    for stage in stages:
        row = {"step": stage.name, eval_set.metric: stage.quality, "parameters": stage.parameters,
               "size_bytes": stage.size_bytes, "latency_ms_batch1": stage.latency_ms,
               f"throughput_batch32_{'tokens' if eval_set.kind == 'causal-lm' else 'examples'}_per_s":
                   stage.throughput}
        if stage.size_bytes and base.size_bytes:
            row["size_ratio"] = round(base.size_bytes / stage.size_bytes, 3)
        if stage.throughput and base.throughput:
            row["speedup_batch32"] = round(stage.throughput / base.throughput, 3)
        if stage.latency_ms and base.latency_ms:
            row["speedup_batch1"] = round(base.latency_ms / stage.latency_ms, 3)
        if eval_set.metric == "accuracy":
            row["accuracy_retention"] = round(stage.quality / base.quality, 4) if base.quality else None
        else:
            row["perplexity_ratio"] = round(stage.quality / base.quality, 4) if base.quality else None
        out.append(row)
    return out


def table(stages: list[Stage], eval_set: EvalSet) -> str:
    """The report's table: one row per stage."""
    unit = "tokens/s" if eval_set.kind == "causal-lm" else "examples/s"
    header = ["step", eval_set.metric, "parameters", "size on disk (MB)", "latency batch 1 (ms)",
              f"throughput batch 32 ({unit})", "size ratio", "speed-up (batch 32)"]
    body = []
    for row, stage in zip(rows(stages, eval_set), stages):
        body.append([stage.name, stage.quality, f"{stage.parameters:,}",
                     f"{stage.size_bytes / 1e6:.2f}" if stage.size_bytes else "-", stage.latency_ms or "-",
                     stage.throughput or "-", row.get("size_ratio", "-"), row.get("speedup_batch32", "-")])
    return markdown_table(header, body)


def plot_quality_vs_size(stages: list[Stage], eval_set: EvalSet, path: Path) -> None:
    """Quality against size on disk, one labelled point per stage, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    sizes = [s.size_bytes / 1e6 if s.size_bytes else 0 for s in stages]
    qualities = [s.quality for s in stages]
    ax.plot(sizes, qualities, "o-", color="tab:blue")
    for stage, x, y in zip(stages, sizes, qualities):
        ax.annotate(stage.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel(eval_set.metric + (" (higher is better)" if eval_set.higher_is_better else " (lower is better)"))
    ax.set_title("quality vs size")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
