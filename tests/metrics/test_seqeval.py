"""llmkit/metrics/seqeval loads offline with `evaluate.load(<dir>)` and agrees with the `seqeval` package.

`seqeval` is only the reference here (skipped if absent); it is not a dependency of llmkit.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import evaluate  # noqa: E402
import pytest  # noqa: E402

import llmkit.metrics  # noqa: E402

seqeval_metrics = pytest.importorskip("seqeval.metrics")
seqeval_labeling = pytest.importorskip("seqeval.metrics.sequence_labeling")

# seqeval's own warnings: "Mean of empty slice" in its macro average when there are no entities, and
# "<tag> seems not to be NE tag" for tags without a B-/I- marker.
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*seems not to be NE tag:UserWarning"),
]

SCRIPT = Path(llmkit.metrics.__file__).parent / "seqeval" / "seqeval.py"
SEEDS = (0, 1, 2, 3, 4)
TYPES = ("PER", "LOC", "ORG")

# (name, references, predictions)
HAND_CASES = [
    ("perfect B/I chains", [["B-PER", "I-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "I-PER", "O", "B-LOC"]]),
    ("I after O starts a chunk", [["O", "I-PER", "I-PER", "O", "B-ORG"]], [["O", "B-PER", "I-PER", "O", "I-ORG"]]),
    ("type switch inside a chunk", [["B-PER", "I-PER", "I-LOC", "I-LOC"]], [["B-PER", "I-PER", "I-PER", "I-LOC"]]),
    ("B right after B", [["B-PER", "B-PER", "I-PER"]], [["B-PER", "I-PER", "I-PER"]]),
    ("entities at sentence end", [["O", "B-LOC"], ["O", "B-ORG", "I-ORG"]], [["O", "B-LOC"], ["O", "O", "B-ORG"]]),
    ("all O", [["O", "O", "O"], ["O"]], [["O", "O", "O"], ["O"]]),
    ("all O references, predicted entity", [["O", "O", "O"]], [["O", "B-PER", "O"]]),
    ("tags without a marker", [["PER", "PER", "O", "LOC"]], [["PER", "O", "O", "B-LOC"]]),
    ("wrong boundary", [["B-ORG", "I-ORG", "I-ORG", "O"]], [["B-ORG", "I-ORG", "O", "O"]]),
    (
        "mixed sentences",
        [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["O", "B-ORG"], []],
        [["B-PER", "O", "O", "B-LOC", "I-LOC"], ["B-ORG", "I-ORG"], []],
    ),
]


@functools.cache
def load() -> evaluate.EvaluationModule:
    """Load the script once; in memory so a failed `_compute` leaves no cache-file lock behind."""
    return evaluate.load(str(SCRIPT), keep_in_memory=True)


def reference_scores(references: list[list[str]], predictions: list[list[str]]) -> dict[str, Any]:
    """The result HF's `seqeval` metric builds from the `seqeval` package, as plain Python numbers."""
    kwargs = {"y_true": references, "y_pred": predictions, "zero_division": 0}
    report = seqeval_metrics.classification_report(output_dict=True, **kwargs)
    expected: dict[str, Any] = {
        name: {"precision": s["precision"], "recall": s["recall"], "f1": s["f1-score"], "number": int(s["support"])}
        for name, s in report.items()
        if not name.endswith(" avg")
    }
    expected["overall_precision"] = seqeval_metrics.precision_score(**kwargs)
    expected["overall_recall"] = seqeval_metrics.recall_score(**kwargs)
    expected["overall_f1"] = seqeval_metrics.f1_score(**kwargs)
    expected["overall_accuracy"] = seqeval_metrics.accuracy_score(references, predictions)
    return expected


def assert_matches(result: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(result) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert set(result[key]) == set(value)
            assert result[key]["number"] == value["number"] and type(result[key]["number"]) is int
            for score in ("precision", "recall", "f1"):
                assert type(result[key][score]) is float
                assert result[key][score] == pytest.approx(float(value[score]), abs=1e-12), (key, score)
        else:
            assert type(result[key]) is float
            assert result[key] == pytest.approx(float(value), abs=1e-12), key


@pytest.mark.parametrize(("name", "references", "predictions"), HAND_CASES, ids=[c[0] for c in HAND_CASES])
def test_hand_cases_match_seqeval(name: str, references: list[list[str]], predictions: list[list[str]]) -> None:
    result = load().compute(predictions=predictions, references=references)
    assert_matches(result, reference_scores(references, predictions))


def test_known_values() -> None:
    """Hand-computed: reference PER(0-1), LOC(3-4); prediction PER(0-0) wrong boundary, LOC(3-4) right."""
    result = load().compute(
        predictions=[["B-PER", "O", "O", "B-LOC", "I-LOC"]], references=[["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    )
    assert result["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert result["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    assert (result["overall_precision"], result["overall_recall"], result["overall_f1"]) == (0.5, 0.5, 0.5)
    assert result["overall_accuracy"] == 0.8


def random_tags(rng: random.Random, length: int) -> list[str]:
    """Any mix of O / B-T / I-T, so I- after O and type switches inside chunks occur often."""
    return [rng.choice(["O", "O", *(f"{p}-{t}" for p in "BI" for t in TYPES)]) for _ in range(length)]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_sequences_match_seqeval(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(0, 12) for _ in range(40)]
    references = [random_tags(rng, n) for n in lengths]
    # Predictions: the reference with some tags changed, so many but not all entities are right.
    predictions = [[t if rng.random() < 0.8 else random_tags(rng, 1)[0] for t in ref] for ref in references]
    result = load().compute(predictions=predictions, references=references)
    assert_matches(result, reference_scores(references, predictions))


@pytest.mark.parametrize("seed", SEEDS)
def test_get_entities_matches_seqeval(seed: int) -> None:
    module = sys.modules[type(load()).__module__]  # the script's module, imported by evaluate.load
    rng = random.Random(seed)
    for _ in range(50):
        seq = random_tags(rng, rng.randint(0, 10))
        assert module.get_entities(seq) == seqeval_labeling.get_entities(seq), seq
        suffixed = [t if t == "O" else "-".join(reversed(t.split("-"))) for t in seq]
        assert module.get_entities(suffixed, suffix=True) == seqeval_labeling.get_entities(suffixed, suffix=True)


def test_suffix_mode_matches_seqeval() -> None:
    references = [["PER-B", "PER-I", "O", "LOC-B"], ["ORG-I", "ORG-I"]]
    predictions = [["PER-B", "O", "O", "LOC-B"], ["ORG-B", "ORG-I"]]
    result = load().compute(predictions=predictions, references=references, suffix=True)
    report = seqeval_metrics.classification_report(references, predictions, suffix=True, output_dict=True)
    assert result["overall_f1"] == pytest.approx(report["micro avg"]["f1-score"])
    assert result["PER"]["f1"] == pytest.approx(report["PER"]["f1-score"])


def test_sentence_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="sentence 1"):
        load().compute(predictions=[["O"], ["B-PER", "O"]], references=[["O"], ["B-PER"]])
