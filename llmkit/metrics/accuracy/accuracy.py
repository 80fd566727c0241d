"""Accuracy, loadable offline with `evaluate.load("<path to this directory>")`."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the fraction of examples whose prediction equals the reference. With the "multilabel"
config it is subset accuracy: an example counts only if its whole 0/1 label vector is right.
The computation is hand-written with numpy to avoid a scikit-learn dependency; it follows
scikit-learn's `accuracy_score` definitions (normalize, sample_weight).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels; with config "multilabel", one 0/1 vector per example.
    references (`list` of `int`): true labels, shaped like `predictions`.
    normalize (`bool`): if True (default) return the fraction of correct examples, else their (weighted) count.
    sample_weight (`list` of `float`, optional): one weight per example.
Returns:
    accuracy (`float`): between 0 and 1 when normalized, higher is better.
Examples:
    >>> accuracy = evaluate.load("<path to this directory>")
    >>> accuracy.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
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


def _correct(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """One boolean per example: is the prediction (the whole label vector, for multilabel) right."""
    equal = y_true == y_pred
    return equal.all(axis=1) if equal.ndim == 2 else equal


class Accuracy(evaluate.Metric):
    """Accuracy for single-label ("default" config) or multi-hot multilabel ("multilabel" config) classification."""

    def _info(self) -> evaluate.MetricInfo:
        feature = datasets.Value("int64")
        if self.config_name == "multilabel":
            feature = datasets.Sequence(feature)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": feature, "references": feature}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(
        self,
        predictions: list[int] | list[list[int]],
        references: list[int] | list[list[int]],
        normalize: bool = True,
        sample_weight: list[float] | None = None,
    ) -> dict[str, float]:
        y_true, y_pred = _to_arrays(predictions, references, self.config_name == "multilabel")
        correct = _correct(y_true, y_pred)
        weight = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        total = float(weight @ correct)
        return {"accuracy": total / float(weight.sum()) if normalize else total}
