"""Sentence pairs for sentence-embedding training: scored pairs (STS-style), (anchor, positive) pairs or
(anchor, positive, hard negative) triplets, or single sentences whose two dropout views are each other's
positive (unsupervised SimCSE). Each text column is tokenized on its own (no padding: the collator pads each
role to its batch's longest), scores are scaled to [0, 1] from data.score_range; cached like the other tasks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llmkit.data.cache import cached_dataset, files_digest, tokenizer_digest
from llmkit.data.classification import PreparedData
from llmkit.data.columns import column_values, list_lengths
from llmkit.data.loading import (
    SPLIT_KEYS,
    as_text,
    empty_text_notes,
    limit_splits,
    note,
    read_splits,
    require_columns,
    rows_text,
    split_source,
)
from llmkit.data.similarity import parse_score
from llmkit.errors import UserError


@dataclass
class PairData(PreparedData):
    """Tokenized pairs: columns <role>_input_ids per role (anchor, positive, negative) and labels (the scaled
    score; 0 for unscored pairs)."""

    roles: tuple[str, ...] = ("anchor", "positive")
    scored: bool = False


def layout(cfg: Any, with_pairs: bool = True) -> list[str]:
    """The text roles of a row, in order: anchor (data.text_column), positive (text_pair_column), negative
    (negative_column); a single sentence is its own positive."""
    roles = ["anchor"]
    if with_pairs:
        roles.append("positive")
        if getattr(cfg, "negative_column", None):
            roles.append("negative")
    return roles


def role_columns(cfg: Any) -> dict[str, str]:
    return {"anchor": cfg.text_column, "positive": cfg.text_pair_column,
            "negative": getattr(cfg, "negative_column", None)}


def read_scores(ds: Any, cfg: Any, split: str) -> list[float]:
    """The scores of a split, scaled to [0, 1] from data.score_range (default [0, 1]: CoSENT and the cosine
    regression compare similarities with scores on that scale); a cell that is not a number, or a number
    outside the range, is refused naming its rows."""
    low, high = cfg.score_range or (0.0, 1.0)
    scores, bad, outside = [], [], []
    for i, value in enumerate(column_values(ds, cfg.score_column), 1):
        number = parse_score(value)  # the same reading as eval's (numbers written as text are numbers)
        if not isinstance(number, float):
            bad.append(i)
        elif not low <= number <= high:
            outside.append(i)
        scores.append((number - low) / (high - low) if isinstance(number, float) else 0.0)
    source = split_source(cfg, split)
    if bad:
        raise UserError(f"data.score_column: {len(bad)} row(s) of the {split} data ({source}) have a score that is "
                        f"not a number ({rows_text(bad)}); fix them, or check data.score_column "
                        f"({cfg.score_column!r}).")
    if outside:
        where = "data.score_range" if cfg.score_range else "the default range [0, 1] (set data.score_range)"
        raise UserError(f"data.score_range: {len(outside)} row(s) of the {split} data ({source}) have a score "
                        f"outside [{low:g}, {high:g}] ({rows_text(outside)}), which is {where}. Set "
                        "data.score_range to the range the scores use (e.g. [0, 5] for STS-B), or fix those rows.")
    return scores


def prepare_pair_data(cfg: Any, tokenizer: Any, seed: int, scored: bool | None = None,
                      with_pairs: bool = True) -> PairData:
    """Load, check and tokenize sentence pairs (or single sentences); the stats count pairs and tokens.
    `scored`: None reads the scores when the training data has data.score_column."""
    start = time.perf_counter()
    roles = layout(cfg, with_pairs)
    if with_pairs and not cfg.text_pair_column:
        raise UserError("data.text_pair_column: sentence-embedding pairs need a second text (the positive, or the "
                        "sentence a score compares with) and it is not set. Name its column in data.text_pair_column; "
                        "for plain sentences without pairs, use llmkit pretrain with pretrain.objective: contrastive.")

    def build():
        import datasets

        raw = read_splits(cfg)
        keys = ["text_column"] + (["text_pair_column"] if with_pairs else [])
        require_columns(raw, cfg, keys)
        with_scores = scored if scored is not None else cfg.score_column in next(iter(raw.values())).column_names
        _require_pair_columns(raw, cfg, with_scores, roles)
        notes = empty_text_notes(raw, cfg, keys) if with_pairs else _drop_empty_sentences(raw, cfg)
        raw = limit_splits(raw, cfg, seed)
        splits = {name: _tokenize(ds, cfg, tokenizer, roles, with_scores, name) for name, ds in raw.items()}
        stats = {name: _stats(ds, roles) for name, ds in splits.items()}
        return datasets.DatasetDict(splits), {"label_names": [], "stats": stats, "notes": notes,
                                              "scored": with_scores}

    parts = {
        "kind": "sentence-pairs", "roles": roles, "scored": scored, "seed": seed,
        "files": {key: files_digest(getattr(cfg, key)) for key in SPLIT_KEYS.values()},
        "hub": [cfg.dataset_name, cfg.dataset_config, cfg.train_split, cfg.eval_split, cfg.test_split],
        "tokenizer": tokenizer_digest(tokenizer),
        "settings": {k: getattr(cfg, k, None) for k in (
            "format", "column_names", "column_map", "text_column", "text_pair_column", "score_column",
            "score_range", "negative_column", "validation_split", "max_train_samples", "max_eval_samples",
            "max_length")},
    }
    cacheable = cfg.cache and cfg.dataset_name is None
    splits, meta, hit = cached_dataset(cacheable, cfg.cache_dir, parts, build)
    for line in meta["notes"]:
        note(line)
    return PairData(splits=splits, label_names=[], from_cache=hit, seconds=time.perf_counter() - start,
                    stats=meta["stats"], roles=tuple(roles), scored=meta["scored"])


def _drop_empty_sentences(raw: dict, cfg: Any) -> list[str]:
    """A corpus read for its sentences (SimCSE) loses its empty lines (blank lines between paragraphs are no
    sentences, and an empty one would be every other's easiest negative); how many, said once per split."""
    notes = []
    for name, ds in list(raw.items()):
        kept = ds.filter(lambda row: bool(as_text(row[cfg.text_column]).strip()), desc=f"dropping empty {name} lines")
        if len(kept) < len(ds):
            notes.append(f"data: {len(ds) - len(kept)} empty lines of the {name} data are not sentences; dropped")
        if len(kept) == 0:
            raise UserError(f"data.text_column: the {name} data ({split_source(cfg, name)}) has no sentence, only "
                            "empty lines; check the file (and data.text_column).")
        raw[name] = kept
    return notes


def _stats(ds: Any, roles: list[str]) -> dict:
    lengths = [list_lengths(ds, f"{role}_input_ids") for role in roles]
    return {"examples": len(ds), "tokens": int(sum(part.sum() for part in lengths)),
            "max_tokens": int(max((part.max() for part in lengths if len(part)), default=0))}


def _require_pair_columns(raw: dict, cfg: Any, scored: bool, roles: list[str]) -> None:
    for name, ds in raw.items():
        wanted = [("data.score_column", cfg.score_column)] if scored else []
        if "negative" in roles:
            wanted.append(("data.negative_column", cfg.negative_column))
        for key, column in wanted:
            if column not in ds.column_names:
                raise UserError(f"{key}: {column!r} is not a column of the {name} data ({split_source(cfg, name)}); "
                                f"its columns are: {', '.join(ds.column_names)}. Set {key} to one of them.")


def _tokenize(ds: Any, cfg: Any, tokenizer: Any, roles: list[str], scored: bool, split: str) -> Any:
    columns = role_columns(cfg)
    labels = read_scores(ds, cfg, split) if scored else [0.0] * len(ds)

    def encode(batch: dict) -> dict:
        out = {}
        for role in roles:
            texts = [as_text(t) for t in batch[columns[role]]]
            out[f"{role}_input_ids"] = tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        return out

    encoded = ds.map(encode, batched=True, remove_columns=ds.column_names, num_proc=cfg.preprocessing_num_workers,
                     desc=f"tokenizing {split}")
    return encoded.add_column("labels", labels)
