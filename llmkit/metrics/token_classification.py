"""Entity-level metrics for token classification, computed by the shipped `seqeval` script.

Used as the Trainer's `compute_metrics` during training and for the final report (one implementation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmkit.metrics.classification import load_metric, metric_suffix

IGNORE_INDEX = -100


class TokenClassificationMetrics:
    """Entity precision/recall/F1 (BIO/IOB2, seqeval's default mode), token accuracy, per-entity scores."""

    def __init__(self, label_names: list[str]):
        self.label_names = list(label_names)
        self._seqeval = load_metric("seqeval")

    def preprocess_logits_for_metrics(self, logits: Any, labels: Any) -> Any:
        """Keep only the argmax per token (Trainer hook), so full logits are never accumulated."""
        if isinstance(logits, tuple):
            logits = logits[0]
        return logits.argmax(-1)

    def to_tags(self, predictions: Any, label_ids: Any) -> tuple[list[list[str]], list[list[str]]]:
        """Tag strings per sentence for the positions that carry a label (first sub-token of each word)."""
        preds, refs = [], []
        for p_row, l_row in zip(predictions, label_ids):  # rows may differ in length (eval) or be padded (Trainer)
            p_row, l_row = np.asarray(p_row), np.asarray(l_row)
            keep = l_row != IGNORE_INDEX
            preds.append([self.label_names[i] for i in p_row[keep]])
            refs.append([self.label_names[i] for i in l_row[keep]])
        return preds, refs

    def names(self) -> list[str]:
        """The names `compute` can report: overall scores, and per entity type (the tags' part after B-/I-) its
        scores and count; known before any prediction (to check train.metric_for_best_model)."""
        entities = sorted({tag.split("-", 1)[1] for tag in self.label_names if "-" in tag})
        per_entity = ("precision", "recall", "f1", "number")
        return ["precision", "recall", "f1", "accuracy"] + [
            f"{name}_{metric_suffix(entity)}" for entity in entities for name in per_entity]

    def compute(self, predictions: Any, label_ids: Any) -> dict[str, float]:
        preds, refs = self.to_tags(predictions, label_ids)
        result = self._seqeval.compute(predictions=preds, references=refs)
        out = {"precision": result["overall_precision"], "recall": result["overall_recall"],
               "f1": result["overall_f1"], "accuracy": result["overall_accuracy"]}
        for entity, scores in result.items():
            if isinstance(scores, dict):
                suffix = metric_suffix(entity)
                out.update({f"{k}_{suffix}": scores[k] for k in ("precision", "recall", "f1")})
                out[f"number_{suffix}"] = scores["number"]
        return {k: float(v) for k, v in out.items()}

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        """Trainer's `compute_metrics`."""
        return self.compute(eval_pred.predictions, eval_pred.label_ids)

    def entity_table(self, metrics: dict, prefix: str) -> tuple[list[str], list[list[Any]]]:
        """Rows of per-entity scores for report.md, from metrics already prefixed (eval_/test_)."""
        entities = sorted(k[len(f"{prefix}_number_"):] for k in metrics if k.startswith(f"{prefix}_number_"))
        rows = [[e] + [metrics[f"{prefix}_{m}_{e}"] for m in ("precision", "recall", "f1")]
                + [int(metrics[f"{prefix}_number_{e}"])] for e in entities]
        return ["entity", "precision", "recall", "f1", "support"], rows
