"""The metric scripts under llmkit/metrics load offline with `evaluate.load(<dir>)` and agree with scikit-learn."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import evaluate  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import llmkit.metrics  # noqa: E402

sklearn_metrics = pytest.importorskip("sklearn.metrics")

METRICS_DIR = Path(llmkit.metrics.__file__).parent
SEEDS = (0, 1, 2)
# precision_recall_f1's keys, in its order, and the scikit-learn function each must equal.
PRF_SCORES = {
    "precision": sklearn_metrics.precision_score,
    "recall": sklearn_metrics.recall_score,
    "f1": sklearn_metrics.f1_score,
}


@functools.cache
def load(name: str, config_name: str | None = None) -> evaluate.EvaluationModule:
    """Load a shipped metric script once per (name, config) for the whole module.

    In memory: a cache file's lock is left held when `_compute` raises, so the next call would wait 1 s for it.
    """
    return evaluate.load(str(METRICS_DIR / name), config_name=config_name, keep_in_memory=True)


def multiclass_data(seed: int, n: int = 60) -> tuple[list[int], list[int]]:
    """References over classes 0-4, predictions over 0-3 and 5: class 4 is never predicted, 5 never true."""
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 5, size=n)
    predictions = np.where(rng.random(n) < 0.5, references, rng.choice([0, 1, 2, 3, 5], size=n))
    predictions[predictions == 4] = 3
    return predictions.tolist(), references.tolist()


def multilabel_data(seed: int, n: int = 40, columns: int = 5) -> tuple[list[list[int]], list[list[int]]]:
    """Multi-hot rows; the last column is never predicted and the one before it is never true."""
    rng = np.random.default_rng(seed)
    references = rng.integers(0, 2, size=(n, columns))
    predictions = np.where(rng.random((n, columns)) < 0.6, references, 1 - references)
    predictions[:, -1] = 0
    references[:, -2] = 0
    return predictions.tolist(), references.tolist()


def assert_matches(ours: float | list[float], expected: float | np.ndarray) -> None:
    """Our result is plain (JSON-serialisable) Python floats and equals scikit-learn's, nan included."""
    json.dumps(ours)
    assert isinstance(ours, list) == isinstance(expected, np.ndarray)
    assert all(type(value) is float for value in (ours if isinstance(ours, list) else [ours]))
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_accuracy_matches_sklearn(seed: int, normalize: bool) -> None:
    predictions, references = multiclass_data(seed)
    weights = np.random.default_rng(seed).random(len(references)).tolist()
    for sample_weight in (None, weights):
        kwargs = dict(normalize=normalize, sample_weight=sample_weight)
        ours = load("accuracy").compute(predictions=predictions, references=references, **kwargs)
        expected = sklearn_metrics.accuracy_score(references, predictions, **kwargs)
        assert_matches(ours["accuracy"], float(expected))


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_accuracy_is_subset_accuracy(seed: int) -> None:
    predictions, references = multilabel_data(seed, columns=2)
    ours = load("accuracy", "multilabel").compute(predictions=predictions, references=references)
    expected = sklearn_metrics.accuracy_score(np.array(references), np.array(predictions))
    assert_matches(ours["accuracy"], float(expected))


def assert_prf_matches(ours: dict[str, float | list[float]], y_true: Any, y_pred: Any, **kwargs: Any) -> None:
    """precision_recall_f1 returns exactly precision, recall and f1, each equal to scikit-learn's score."""
    assert list(ours) == list(PRF_SCORES)
    for name, score in PRF_SCORES.items():
        expected = score(y_true, y_pred, **kwargs)
        assert_matches(ours[name], expected if isinstance(expected, np.ndarray) else float(expected))


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
@pytest.mark.parametrize("zero_division", [0.0, 1.0, np.nan])
def test_multiclass_scores_match_sklearn(average: str | None, zero_division: float) -> None:
    for seed in SEEDS:
        predictions, references = multiclass_data(seed)
        weights = np.random.default_rng(seed).random(len(references)).tolist()
        # labels=None, a subset in a custom order, and a superset with a label that never occurs (0/0 for f1).
        for labels, sample_weight in ((None, None), ([3, 1, 4], None), ([0, 1, 2, 3, 4, 5, 6], weights)):
            kwargs = dict(labels=labels, average=average, sample_weight=sample_weight, zero_division=zero_division)
            ours = load("precision_recall_f1").compute(predictions=predictions, references=references, **kwargs)
            assert_prf_matches(ours, references, predictions, **kwargs)


@pytest.mark.parametrize(
    ("predictions", "references", "pos_label"),
    [
        ([0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0], 1),
        ([0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0], 0),
        ([3, 7, 7, 3, 7], [7, 7, 3, 3, 3], 7),
        ([0, 0, 0, 0], [0, 0, 0, 0], 1),  # pos_label absent everywhere: 0/0
        ([0, 0, 0, 0], [1, 0, 1, 0], 1),  # pos_label never predicted
    ],
)
def test_binary_scores_match_sklearn(predictions: list[int], references: list[int], pos_label: int) -> None:
    weights = np.random.default_rng(0).random(len(references)).tolist()
    for zero_division, sample_weight in ((0.0, None), (1.0, None), (np.nan, None), (0.0, weights)):
        kwargs = dict(pos_label=pos_label, zero_division=zero_division, sample_weight=sample_weight)
        ours = load("precision_recall_f1").compute(predictions=predictions, references=references, **kwargs)
        assert_prf_matches(ours, references, predictions, **kwargs)


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
@pytest.mark.parametrize("zero_division", [0.0, 1.0, np.nan])
def test_multilabel_scores_match_sklearn(average: str | None, zero_division: float) -> None:
    for seed in SEEDS:
        predictions, references = multilabel_data(seed)
        weights = np.random.default_rng(seed).random(len(references)).tolist()
        for labels, sample_weight in ((None, None), ([4, 0, 3], None), (None, weights)):
            kwargs = dict(labels=labels, average=average, sample_weight=sample_weight, zero_division=zero_division)
            metric = load("precision_recall_f1", "multilabel")
            ours = metric.compute(predictions=predictions, references=references, **kwargs)
            assert_prf_matches(ours, np.array(references), np.array(predictions), **kwargs)


def test_scores_equal_sklearn_precision_recall_fscore_support() -> None:
    """The one-pass result is scikit-learn's precision_recall_fscore_support (support left out)."""
    predictions, references = multiclass_data(0)
    for average in ("micro", "macro", "weighted", None):
        ours = load("precision_recall_f1").compute(predictions=predictions, references=references, average=average)
        precision, recall, f1, _ = sklearn_metrics.precision_recall_fscore_support(
            references, predictions, average=average, zero_division=0.0
        )
        for name, expected in (("precision", precision), ("recall", recall), ("f1", f1)):
            assert_matches(ours[name], expected if average is None else float(expected))


@pytest.mark.parametrize(
    ("config_name", "predictions", "references", "kwargs"),
    [
        (None, [0, 1, 2], [0, 1, 1], {}),  # multiclass data with the default average="binary"
        (None, [3, 7], [3, 3], {}),  # pos_label=1 is not one of the two labels
        (None, [0, 1], [0, 1], {"average": "samples"}),
        (None, [0, 1], [0, 1], {"zero_division": "warn"}),
        (None, [0, 1], [0, 1], {"zero_division": 0.5}),
        (None, [0, 1], [0, 1], {"average": "macro", "labels": []}),
        ("multilabel", [[0, 1]], [[0, 1]], {}),  # multilabel data with average="binary"
        ("multilabel", [[0, 1]], [[0, 1]], {"average": "macro", "labels": [2]}),
        ("multilabel", [[0, 1]], [[0, 1]], {"average": "macro", "labels": [-1]}),
        ("multilabel", [[0, 2]], [[0, 1]], {"average": "macro"}),
    ],
)
def test_scores_reject_bad_arguments(
    config_name: str | None, predictions: list, references: list, kwargs: dict
) -> None:
    with pytest.raises(ValueError):
        load("precision_recall_f1", config_name).compute(predictions=predictions, references=references, **kwargs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize", [None, "true", "pred", "all"])
def test_confusion_matrix_matches_sklearn(seed: int, normalize: str | None) -> None:
    predictions, references = multiclass_data(seed)
    for labels in (None, [4, 0, 2], [0, 1, 2, 3, 4, 5, 6]):
        ours = load("confusion_matrix").compute(
            predictions=predictions, references=references, labels=labels, normalize=normalize
        )["confusion_matrix"]
        expected = sklearn_metrics.confusion_matrix(references, predictions, labels=labels, normalize=normalize)
        json.dumps(ours)
        assert {type(value) for row in ours for value in row} == ({int} if normalize is None else {float})
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [{"normalize": "rows"}, {"labels": []}, {"labels": [9]}])
def test_confusion_matrix_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        load("confusion_matrix").compute(predictions=[0, 1], references=[0, 1], **kwargs)


def test_combine_accuracy_and_precision_recall_f1() -> None:
    predictions, references = [0, 1, 1, 0, 1], [0, 1, 0, 0, 0]
    combined = evaluate.combine([str(METRICS_DIR / "accuracy"), str(METRICS_DIR / "precision_recall_f1")])
    result = combined.compute(predictions=predictions, references=references)
    assert result.keys() == {"accuracy", "precision", "recall", "f1"}
    assert_matches(result["accuracy"], float(sklearn_metrics.accuracy_score(references, predictions)))
    assert_prf_matches({name: result[name] for name in PRF_SCORES}, references, predictions)
