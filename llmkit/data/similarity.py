"""Sentence pairs for evaluating embeddings (eval.task sts and retrieval): the two texts of each row, the gold
scores checked as numbers (and against data.score_range), (query, positive) pairs with their distinct candidates.

Row numbers in messages are 1-based data rows, as in the other data checks (llmkit/data/loading.py).
"""

from __future__ import annotations

import math
from typing import Any

from llmkit.data.columns import column_values
from llmkit.data.loading import (
    SPLIT_KEYS,
    as_text,
    empty_text_notes,
    note,
    require_columns,
    rows_text,
    short,
    split_source,
)
from llmkit.errors import UserError

PAIR_KEYS = ("text_column", "text_pair_column")


def check_pair_columns(splits: dict, cfg: Any, task: str) -> None:
    """The columns a pair task reads exist in every split (data.text_column, data.text_pair_column, and
    data.score_column for sts); rows with an empty text are kept and listed in a note."""
    if not cfg.text_pair_column:
        holds = ("data.text_column holds the first, data.score_column the gold score" if task == "sts" else
                 "data.text_column holds the query, data.text_pair_column its positive")
        raise UserError(f"data.text_pair_column: eval.task {task} reads pairs of sentences, and no column holds the "
                        f"second one; set data.text_pair_column to it ({holds}).")
    require_columns(splits, cfg, [*PAIR_KEYS, "score_column"] if task == "sts" else list(PAIR_KEYS))
    for line in empty_text_notes(splits, cfg, PAIR_KEYS):
        note(line)


def pair_texts(ds: Any, cfg: Any) -> tuple[list[str], list[str]]:
    """The first and second text of every row, in file order (a missing cell is "")."""
    return ([as_text(v) for v in column_values(ds, cfg.text_column)],
            [as_text(v) for v in column_values(ds, cfg.text_pair_column)])


def parse_score(value: Any) -> float | None | str:
    """A gold score as a float; None for a missing cell; the value itself (a str) when it is not a number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return repr(value)
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return float(value) if math.isfinite(value) else repr(value)


def gold_scores(ds: Any, cfg: Any, split: str) -> list[float]:
    """The gold scores of a split as floats: every cell a finite number (numbers written as text are read as
    numbers), inside data.score_range when it is set, and not all the same (a correlation needs them to vary)."""
    column, where = cfg.score_column, f"the {split} data ({split_source(cfg, split)})"
    values = [parse_score(v) for v in column_values(ds, column)]
    missing = [row for row, v in enumerate(values, 1) if v is None]
    if missing:
        raise UserError(f"data.score_column: {column!r} is empty in {rows_text(missing)} of {where}; every pair "
                        "needs its gold score. Fill in those rows or remove them.")
    bad = [(row, v) for row, v in enumerate(values, 1) if isinstance(v, str)]
    if bad:
        shown = ", ".join(short(v, 30) for _, v in bad[:3])
        raise UserError(f"data.score_column: {column!r} holds values that are not numbers in "
                        f"{rows_text([row for row, _ in bad])} of {where} ({shown}); a gold score is a number "
                        f"(e.g. 0 to 5). Fix those rows, or set data.score_column to the column with the scores (the "
                        f"columns are: {', '.join(ds.column_names)}).")
    if cfg.score_range is not None:
        low, high = cfg.score_range
        outside = [(row, v) for row, v in enumerate(values, 1) if not low <= v <= high]
        if outside:
            shown = ", ".join(f"{v:g}" for _, v in outside[:5])
            raise UserError(f"data.score_range: {rows_text([row for row, _ in outside])} of {where} have scores "
                            f"outside [{low:g}, {high:g}] ({shown}); fix those rows, or set data.score_range to the "
                            "range the scores lie in.")
    if len(values) < 2:
        raise UserError(f"{_file_key(split)}: eval.task sts correlates similarities with gold scores and needs at "
                        f"least 2 scored pairs; {where} has {len(values)}.")
    if len(set(values)) == 1:
        raise UserError(f"data.score_column: every gold score in {where} is {values[0]:g}; a correlation needs "
                        f"scores that differ. Check that data.score_column ({column!r}) names the scores.")
    return values


def retrieval_pairs(ds: Any, cfg: Any, split: str) -> tuple[list[str], list[str], list[int]]:
    """(queries, candidates, each query's own candidate): the candidates are the split's positives.

    Duplicate candidates count once: positives with the same text (exact string match, as read from the file)
    are one candidate, and it is the answer of every query whose positive has that text. Otherwise a repeated
    positive would compete with its own copy, and its queries could at best rank their answer second.
    """
    queries, positives = pair_texts(ds, cfg)
    where = f"the {split} data ({split_source(cfg, split)})"
    index: dict[str, int] = {}
    gold = [index.setdefault(text, len(index)) for text in positives]
    if len(queries) < 2:
        raise UserError(f"{_file_key(split)}: eval.task retrieval ranks all the positives of the file for every "
                        f"query and needs at least 2 (query, positive) pairs; {where} has {len(queries)}.")
    if len(index) < 2:
        raise UserError(f"{_file_key(split)}: the {len(queries)} pairs of {where} share one positive text "
                        f"({short(positives[0], 40)}), so there is nothing to rank; eval.task retrieval needs at "
                        "least 2 different positives.")
    return queries, list(index), gold


def _file_key(split: str) -> str:
    return f"data.{SPLIT_KEYS.get(split, 'validation_file')}"
