"""Precision, recall and F1 in one pass, loadable offline with `evaluate.load("<path to this directory>")`."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Precision, recall and F1 from one set of per-label counts. Precision is the fraction of predicted
positives that are correct: TP / (TP + FP). Recall is the fraction of actual positives that are
found: TP / (TP + FN). F1 is their harmonic mean: 2 * TP / (2 * TP + FP + FN).
The computation is hand-written with numpy to avoid a scikit-learn dependency; it follows
scikit-learn's `precision_recall_fscore_support` definitions (labels, pos_label, average,
sample_weight, zero_division), i.e. what `precision_score`, `recall_score` and `f1_score` return.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels; with config "multilabel", one 0/1 vector per example.
    references (`list` of `int`): true labels, shaped like `predictions`.
    labels (`list` of `int`, optional): labels to score (column indices for "multilabel"). Defaults to
        the sorted union of the labels in predictions and references (every column for "multilabel").
    pos_label (`int`): the positive class when `average="binary"`. Defaults to 1.
    average (`str` or `None`): "binary" (default, the scores of `pos_label` on binary data), "micro"
        (global counts), "macro" (unweighted mean over labels), "weighted" (mean weighted by support)
        or None (one score per label).
    sample_weight (`list` of `float`, optional): one weight per example.
    zero_division (`float`): score of a label whose score is 0/0 (precision: never predicted; recall:
        never in the references; F1: neither): 0.0 (default), 1.0 or nan (nan scores are then left
        out of the average).
Returns:
    precision (`float`, or `list` of `float` when `average` is None): between 0 and 1, higher is better.
    recall (`float`, or `list` of `float` when `average` is None): between 0 and 1, higher is better.
    f1 (`float`, or `list` of `float` when `average` is None): between 0 and 1, higher is better.
Examples:
    >>> precision_recall_f1 = evaluate.load("<path to this directory>")
    >>> precision_recall_f1.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'precision': 0.5, 'recall': 1.0, 'f1': 0.6666666666666666}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

_AVERAGES = ("binary", "micro", "macro", "weighted", None)


def _to_arrays(
    predictions: list[int] | list[list[int]], references: list[int] | list[list[int]], multilabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return (y_true, y_pred) as int64 arrays; multilabel inputs must be equally shaped 0/1 matrices."""
    y_true = np.asarray(references, dtype=np.int64)
    y_pred = np.asarray(predictions, dtype=np.int64)
    if multilabel:
        same_shape = y_true.ndim == 2 and y_true.shape == y_pred.shape
        if not (same_shape and np.isin(y_true, (0, 1)).all() and np.isin(y_pred, (0, 1)).all()):
            raise ValueError("multilabel predictions and references must be 0/1 vectors of one length per example")
    return y_true, y_pred


def _select_labels(
    y_true: np.ndarray, y_pred: np.ndarray, labels: list[int] | None, pos_label: int, average: str | None
) -> np.ndarray:
    """Return the labels to score (column indices for multilabel inputs), checked like scikit-learn does."""
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    multilabel = y_true.ndim == 2
    present = np.arange(y_true.shape[1]) if multilabel else np.union1d(y_true, y_pred)
    if average == "binary":
        if multilabel or present.size > 2:
            raise ValueError("the targets are not binary but average='binary': choose micro, macro, weighted or None")
        if pos_label not in present and present.size == 2:
            raise ValueError(f"pos_label={pos_label} is not a valid label, it should be one of {present.tolist()}")
        return np.array([pos_label])
    if labels is None:
        return present
    selected = np.asarray(labels, dtype=np.int64)
    if selected.size == 0:
        raise ValueError("labels must contain at least one label")
    if multilabel and (selected.min() < 0 or selected.max() >= present.size):
        raise ValueError(f"multilabel labels are column indices and must be in [0, {present.size})")
    return selected


def _indicator(y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One boolean column per label: is this label true for this example."""
    if y.ndim == 2:
        return y[:, labels].astype(bool)
    return y[:, None] == labels[None, :]


def _label_counts(
    y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray, sample_weight: list[float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return per-label (weighted) true positives, predicted positives and true positives + false negatives."""
    weight = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    true_hot = _indicator(y_true, labels)
    pred_hot = _indicator(y_pred, labels)
    return weight @ (true_hot & pred_hot), weight @ pred_hot, weight @ true_hot


def _check_zero_division(zero_division: float) -> float:
    """Accept 0.0, 1.0 or nan, like scikit-learn (without its "warn" option)."""
    value = float(zero_division)
    if not (value in (0.0, 1.0) or np.isnan(value)):
        raise ValueError(f"zero_division must be 0.0, 1.0 or nan, got {zero_division!r}")
    return value


def _divide(numerator: np.ndarray, denominator: np.ndarray, zero_division: float) -> np.ndarray:
    """Element-wise division where 0/0 (or x/0) gives `zero_division`."""
    zero = denominator == 0
    result = numerator / np.where(zero, 1.0, denominator)
    result[zero] = zero_division
    return result


def _average(scores: np.ndarray, support: np.ndarray, average: str | None) -> float | list[float]:
    """Average per-label scores as scikit-learn does (nan scores left out); None keeps one score per label."""
    if average is None:
        return scores.tolist()
    kept = ~np.isnan(scores)
    if not kept.any():
        return float("nan")
    weights = support[kept] if average == "weighted" and support[kept].sum() > 0 else None
    return float(np.average(scores[kept], weights=weights))


def _scores(
    tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray, zero_division: float
) -> dict[str, np.ndarray]:
    """Per-label precision = TP / predicted positives, recall = TP / actual positives and
    F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted positives + actual positives)."""
    return {
        "precision": _divide(tp, predicted, zero_division),
        "recall": _divide(tp, actual, zero_division),
        "f1": _divide(2 * tp, predicted + actual, zero_division),
    }


class PrecisionRecallF1(evaluate.Metric):
    """Precision, recall and F1 for single-label ("default" config) or multi-hot multilabel ("multilabel" config)
    classification."""

    def _info(self) -> evaluate.MetricInfo:
        feature = datasets.Value("int64")
        if self.config_name == "multilabel":
            feature = datasets.Sequence(feature)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": feature, "references": feature}),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_recall_fscore_support.html"
            ],
        )

    def _compute(
        self,
        predictions: list[int] | list[list[int]],
        references: list[int] | list[list[int]],
        labels: list[int] | None = None,
        pos_label: int = 1,
        average: str | None = "binary",
        sample_weight: list[float] | None = None,
        zero_division: float = 0.0,
    ) -> dict[str, float | list[float]]:
        zero_division = _check_zero_division(zero_division)
        y_true, y_pred = _to_arrays(predictions, references, self.config_name == "multilabel")
        selected = _select_labels(y_true, y_pred, labels, pos_label, average)
        tp, predicted, actual = _label_counts(y_true, y_pred, selected, sample_weight)
        if average == "micro":
            tp, predicted, actual = tp.sum(keepdims=True), predicted.sum(keepdims=True), actual.sum(keepdims=True)
        scores = _scores(tp, predicted, actual, zero_division)
        return {name: _average(values, actual, average) for name, values in scores.items()}
