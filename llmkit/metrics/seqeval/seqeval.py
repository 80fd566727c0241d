"""Seqeval (entity-level NER/chunking scores), loadable offline with `evaluate.load("<path to this directory>")`."""

import collections

import datasets
import evaluate

_DESCRIPTION = """
Entity-level precision, recall and F1 for sequence labelling (named-entity recognition, chunking),
plus token-level accuracy. An entity is a chunk of tags (type, start, end); a predicted entity counts
only if a reference entity has the same type and the same boundaries. Scores are micro-averaged over
all entities ("overall_*") and also given per entity type.
The chunking follows the `seqeval` package's default (non-strict) mode for IOB2/BIO tags, IOB1 tolerant:
a chunk starts at B-X, or at I-X after O or after a different type, and ends at O, at B-, or when the type
changes. It is written by hand so nothing is fetched and no dependency is needed.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): predicted tags, one list per sentence.
    references (`list` of `list` of `str`): true tags, one list per sentence, each as long as its prediction.
    suffix (`bool`): if True the tag marker is a suffix ("PER-B") instead of a prefix ("B-PER"). Default False.
Returns:
    overall_precision (`float`), overall_recall (`float`), overall_f1 (`float`): micro-averaged entity scores.
    overall_accuracy (`float`): fraction of tokens whose tag is right.
    one entry per entity type T (in predictions or references): T: {"precision", "recall", "f1", "number"},
    "number" being how many T entities the references hold. A division by zero gives 0.0.
Examples:
    >>> seqeval = evaluate.load("<path to this directory>")
    >>> seqeval.compute(predictions=[["B-PER", "I-PER", "O", "B-LOC"]], references=[["B-PER", "I-PER", "O", "O"]])
    {'LOC': {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'number': 0}, 'PER': {'precision': 1.0, 'recall': 1.0, \
'f1': 1.0, 'number': 1}, 'overall_precision': 0.5, 'overall_recall': 1.0, 'overall_f1': 0.6666666666666666, \
'overall_accuracy': 0.75}
"""

_CITATION = """
@misc{seqeval,
  title={{seqeval}: A Python framework for sequence labeling evaluation},
  url={https://github.com/chakki-works/seqeval},
  note={Software available from https://github.com/chakki-works/seqeval},
  author={Hiroki Nakayama},
  year={2018},
}
@inproceedings{ramshaw-marcus-1995-text,
  title={Text Chunking using Transformation-Based Learning},
  author={Ramshaw, Lance and Marcus, Mitch},
  booktitle={Third Workshop on Very Large Corpora},
  year={1995},
  url={https://www.aclweb.org/anthology/W95-0107},
}
"""


def _split_tag(chunk: str, suffix: bool) -> tuple[str, str]:
    """(marker, type) of one tag, as seqeval splits it: "B-PER" -> ("B", "PER"), "O" -> ("O", "_")."""
    if suffix:
        return chunk[-1:], chunk[:-1].rsplit("-", maxsplit=1)[0] or "_"
    return chunk[:1], chunk[1:].split("-", maxsplit=1)[-1] or "_"


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Did a chunk end between the previous and the current token (seqeval's `end_of_chunk`)."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Did a chunk start at the current token (seqeval's `start_of_chunk`)."""
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(seq: list[str], suffix: bool = False) -> list[tuple[str, int, int]]:
    """Entities of one sentence as (type, first index, last index), like seqeval's default-mode `get_entities`.

    A tag without a marker, such as "PER", is split as seqeval splits it (marker "P", type "ER").
    """
    prev_tag, prev_type, begin = "O", "", 0
    chunks = []
    for i, chunk in enumerate([*seq, "O"]):
        tag, type_ = _split_tag(chunk, suffix)
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _divide(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _scores(n_correct: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    """(precision, recall, f1); each 0.0 where its denominator is 0."""
    precision, recall = _divide(n_correct, n_pred), _divide(n_correct, n_true)
    denom = precision + recall
    return precision, recall, (2 * precision * recall / denom if denom else 0.0)


class Seqeval(evaluate.Metric):
    """Entity-level precision/recall/F1 and token accuracy for IOB/BIO sequence labelling, like HF's `seqeval`."""

    def _info(self) -> evaluate.MetricInfo:
        feature = datasets.Sequence(datasets.Value("string"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": feature, "references": feature}),
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(
        self, predictions: list[list[str]], references: list[list[str]], suffix: bool = False
    ) -> dict[str, float | dict[str, float | int]]:
        true_entities, pred_entities = set(), set()
        n_tokens = n_right_tokens = 0
        for sentence, (pred, ref) in enumerate(zip(predictions, references)):
            if len(pred) != len(ref):
                raise ValueError(f"sentence {sentence}: prediction has {len(pred)} tags but reference has {len(ref)}")
            n_tokens += len(ref)
            n_right_tokens += sum(p == r for p, r in zip(pred, ref))
            true_entities.update((sentence, *entity) for entity in get_entities(list(ref), suffix))
            pred_entities.update((sentence, *entity) for entity in get_entities(list(pred), suffix))

        n_true = collections.Counter(entity[1] for entity in true_entities)
        n_pred = collections.Counter(entity[1] for entity in pred_entities)
        n_correct = collections.Counter(entity[1] for entity in true_entities & pred_entities)

        results: dict[str, float | dict[str, float | int]] = {}
        for type_ in sorted(n_true.keys() | n_pred.keys()):
            precision, recall, f1 = _scores(n_correct[type_], n_pred[type_], n_true[type_])
            results[type_] = {"precision": precision, "recall": recall, "f1": f1, "number": n_true[type_]}
        precision, recall, f1 = _scores(sum(n_correct.values()), len(pred_entities), len(true_entities))
        results["overall_precision"] = precision
        results["overall_recall"] = recall
        results["overall_f1"] = f1
        results["overall_accuracy"] = _divide(n_right_tokens, n_tokens)
        return results
