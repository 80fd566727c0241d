"""Confusion matrix, loadable offline with `evaluate.load("<path to this directory>")`."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The confusion matrix counts, for every pair of labels (true, predicted), the examples with that
reference and that prediction: rows are true labels, columns are predicted labels.
The computation is hand-written with numpy to avoid a scikit-learn dependency; it follows
scikit-learn's `confusion_matrix` definitions (labels, normalize).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels.
    labels (`list` of `int`, optional): the labels that index the rows and columns, in this order.
        Examples whose reference or prediction is not among them are left out. Defaults to the
        sorted union of the labels in predictions and references.
    normalize (`str` or `None`): None (default) for counts, or divide by the row sums ("true"),
        the column sums ("pred") or the total ("all"); rows or columns summing to 0 stay 0.
Returns:
    confusion_matrix (`list` of `list`): of `int` counts, or of `float` when `normalize` is set.
Examples:
    >>> confusion_matrix = evaluate.load("<path to this directory>")
    >>> confusion_matrix.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'confusion_matrix': [[1, 0, 0], [0, 1, 0], [0, 1, 1]]}
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

# The axis summed to normalize the matrix: rows ("true"), columns ("pred") or everything ("all").
_NORMALIZE_AXES = {"true": 1, "pred": 0, "all": None}


def _select_labels(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int] | None) -> np.ndarray:
    """Return the row/column labels, checked like scikit-learn does."""
    if labels is None:
        return np.union1d(y_true, y_pred)
    selected = np.asarray(labels, dtype=np.int64)
    if selected.size == 0:
        raise ValueError("labels must contain at least one label")
    if not np.isin(selected, y_true).any():
        raise ValueError("at least one of the labels must occur in the references")
    return selected


def _normalized(matrix: np.ndarray, normalize: str) -> np.ndarray:
    """Divide the counts by their row, column or overall sums; a zero sum leaves zeros."""
    sums = matrix.sum(axis=_NORMALIZE_AXES[normalize], keepdims=True)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape), where=sums != 0)


class ConfusionMatrix(evaluate.Metric):
    """Confusion matrix for single-label classification, rows = true labels and columns = predicted labels."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html"],
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        labels: list[int] | None = None,
        normalize: str | None = None,
    ) -> dict[str, list[list[int]] | list[list[float]]]:
        if normalize is not None and normalize not in _NORMALIZE_AXES:
            raise ValueError(f"normalize must be None, 'true', 'pred' or 'all', got {normalize!r}")
        y_true = np.asarray(references, dtype=np.int64)
        y_pred = np.asarray(predictions, dtype=np.int64)
        selected = _select_labels(y_true, y_pred, labels)
        true_hot = (y_true[:, None] == selected[None, :]).astype(np.int64)
        pred_hot = (y_pred[:, None] == selected[None, :]).astype(np.int64)
        matrix = true_hot.T @ pred_hot
        return {"confusion_matrix": (matrix if normalize is None else _normalized(matrix, normalize)).tolist()}
