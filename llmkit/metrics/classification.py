"""Classification metrics for Trainer and reports, computed by the metric scripts shipped in llmkit.

One implementation for evaluation during training and after it: the same
object is the Trainer's `compute_metrics` and produces the report's tables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.metrics.tables import markdown_table, plot_confusion_matrix

METRICS_DIR = Path(__file__).resolve().parent


def load_metric(name: str, config_name: str | None = None):
    """Load a shipped metric script with `evaluate` (offline: nothing is fetched)."""
    import evaluate

    # keep_in_memory: no arrow cache files or file locks per compute() (a failed compute leaves a lock that
    # costs the next call ~1 s).
    return evaluate.load(str(METRICS_DIR / name), config_name, keep_in_memory=True)


def metric_suffix(label: str) -> str:
    """A label name made safe for a metric key: 'very good' -> 'very_good'."""
    return re.sub(r"\W+", "_", str(label)).strip("_") or "label"


class ClassificationMetrics:
    """Accuracy, macro precision/recall/F1 and per-class scores for single- or multi-label classification."""

    def __init__(self, label_names: list[str], multi_label: bool = False, threshold: float = 0.5):
        self.label_names = list(label_names)
        self.multi_label = multi_label
        self.threshold = threshold
        config = "multilabel" if multi_label else None
        self._accuracy = load_metric("accuracy", config)
        self._prf = load_metric("precision_recall_f1", config)
        self._confusion = None if multi_label else load_metric("confusion_matrix")

    def predictions_from_logits(self, logits: Any) -> Any:
        """Class ids (argmax), or 0/1 vectors (sigmoid > threshold) for multi-label. Works on tensors and arrays."""
        if self.multi_label:
            import torch

            logits = torch.as_tensor(logits)
            return (torch.sigmoid(logits.float()) > self.threshold).long()
        return logits.argmax(-1)

    def preprocess_logits_for_metrics(self, logits: Any, labels: Any) -> Any:
        """Keep only predictions per eval batch (Trainer hook): the full logits are never accumulated."""
        if isinstance(logits, tuple):
            logits = logits[0]
        return self.predictions_from_logits(logits)

    def names(self) -> list[str]:
        """The names `compute` reports, known before any prediction (to check train.metric_for_best_model)."""
        names = ["accuracy"]
        for name in ("precision", "recall", "f1"):
            names += [name, *([f"{name}_micro"] if self.multi_label else [])]
            names += [f"{name}_{metric_suffix(label)}" for label in self.label_names]
        return names

    def compute(self, predictions: Any, references: Any) -> dict[str, float]:
        preds = np.asarray(predictions).astype(np.int64).tolist()
        refs = np.asarray(references).astype(np.int64).tolist()
        ids = list(range(len(self.label_names)))
        out = {"accuracy": self._accuracy.compute(predictions=preds, references=refs)["accuracy"]}
        # One call per averaging mode computes precision, recall and F1 together.
        macro = self._prf.compute(predictions=preds, references=refs, labels=ids, average="macro")
        micro = self._prf.compute(predictions=preds, references=refs, average="micro") if self.multi_label else None
        per_class = self._prf.compute(predictions=preds, references=refs, labels=ids, average=None)
        for name in ("precision", "recall", "f1"):
            out[name] = macro[name]
            if micro is not None:
                out[f"{name}_micro"] = micro[name]
            scores = zip(self.label_names, per_class[name])
            out.update({f"{name}_{metric_suffix(label)}": float(v) for label, v in scores})
        return {k: float(v) for k, v in out.items()}

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        """Trainer's `compute_metrics`."""
        return self.compute(eval_pred.predictions, eval_pred.label_ids)

    def confusion_matrix(self, predictions: Any, references: Any) -> list[list[int]] | None:
        if self._confusion is None:
            return None
        result = self._confusion.compute(predictions=np.asarray(predictions).tolist(),
                                         references=np.asarray(references).tolist(),
                                         labels=list(range(len(self.label_names))))
        return result["confusion_matrix"]


def classification_report(split: str, metrics_fn: ClassificationMetrics, predictions: Any, label_ids: Any,
                          prefix: str, metrics: dict, out_dir: Path | None = None):
    """report.md sections (per-class scores, confusion matrix) for one split; the matrix also as
    `out_dir/confusion_matrix_<split>.png`. Returns (sections, matrix or None for multi-label)."""
    names = metrics_fn.label_names
    rows = [[name] + [metrics.get(f"{prefix}_{m}_{metric_suffix(name)}") for m in ("precision", "recall", "f1")]
            for name in names]
    sections = [(f"Per-class scores ({split})", markdown_table(["class", "precision", "recall", "f1"], rows))]
    matrix = metrics_fn.confusion_matrix(predictions, label_ids)
    if matrix is not None:
        body = markdown_table(["true \\ predicted"] + names, [[n] + row for n, row in zip(names, matrix)])
        sections.append((f"Confusion matrix ({split})", body))
        if out_dir is not None:
            plot_confusion_matrix(matrix, names, Path(out_dir) / f"confusion_matrix_{split}.png", split)
    return sections, matrix
