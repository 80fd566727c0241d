"""Token-classification data (NER-style): CoNLL files or jsonl word/tag lists, tags aligned to sub-tokens."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from llmkit.data.cache import cached_dataset, files_digest, tokenizer_digest
from llmkit.data.classification import LabelReading, PreparedData, normalise_label, token_stats
from llmkit.data.columns import column_values
from llmkit.data.loading import (
    SPLIT_KEYS,
    as_text,
    limit_splits,
    note,
    read_splits,
    require_columns,
    short,
    split_source,
)
from llmkit.errors import UserError

IGNORE_INDEX = -100


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label the first sub-token of each word; later sub-tokens and special tokens get -100 (ignored)."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else word_labels[word])
        previous = word
    return labels


def check_sentences(splits: dict, cfg: Any) -> list[str]:
    """Words and tags must be lists (a string of tags would be read letter by letter); spaces around a tag are
    stripped (" B-PER" is the tag "B-PER"). Returns notes on the stripped tags."""
    notes = []
    for split, ds in splits.items():
        stripped = 0
        for key in ("tokens_column", "tags_column"):
            column = getattr(cfg, key)
            for row, value in enumerate(column_values(ds, column), 1):
                if not isinstance(value, (list, tuple)):
                    raise UserError(f"data.{key}: {column!r} holds {short(value)} in row {row} of the {split} data "
                                    f"({split_source(cfg, split)}), not a list; each row needs a list of words and "
                                    "a list of tags, one per word (or use a .conll file).")
                if key == "tags_column":
                    stripped += sum(1 for t in value if isinstance(t, str) and t.strip() != t and t.strip())
        if stripped:
            notes.append(f"stripped spaces around {stripped} tag{'s' if stripped > 1 else ''} ({split})")
    return notes


def tag_names(splits: dict, cfg: Any) -> list[str]:
    """Tag set: data.label_names, else the sorted distinct tags of the training data."""
    if cfg.label_names:
        return [str(n) for n in cfg.label_names]
    if "train" not in splits:
        raise UserError("data.label_names: there is no training data to read the tag set from; list the tags in "
                        "data.label_names.")
    return sorted({str(t).strip() for row in column_values(splits["train"], cfg.tags_column) for t in row})


def encode(splits: dict, tokenizer: Any, names: list[str], cfg: Any) -> dict:
    """Tokenize word lists (is_split_into_words) and align tag ids to sub-tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("tokenizer: token classification needs a fast tokenizer (word_ids); this one is not.")
    def tag_value(tag: Any) -> Any:
        return tag.strip() if isinstance(tag, str) else normalise_label(tag)

    # The one rule of labels (data/classification.py): a tag equal to a tag name is that tag; integers are
    # positions in data.label_names only when no tag is a name.
    reading = LabelReading(names, {tag_value(t) for ds in splits.values() for row in column_values(ds, cfg.tags_column)
                                  for t in row})

    def to_id(tag: Any, split: str) -> int:
        value = tag_value(tag)
        if value in reading.outside:
            raise UserError(f"data.tags_column: the {split} data has the tag {tag!r}, which is not in the tag set "
                            f"({', '.join(names)}).{reading.index_note} Fix the data, or list every tag in "
                            "data.label_names.")
        return reading(value)

    out = {}
    for split, ds in splits.items():
        words_and_tags = zip(column_values(ds, cfg.tokens_column), column_values(ds, cfg.tags_column))
        for i, (words, tags) in enumerate(words_and_tags):
            if len(words) != len(tags):
                raise UserError(f"data.tags_column: sentence {i} of the {split} data has {len(words)} words but "
                                f"{len(tags)} tags; they must pair up one to one.")

        def batch_encode(batch: dict, split=split) -> dict:
            words = [[as_text(w) for w in row] for row in batch[cfg.tokens_column]]  # numbers are words too
            enc = tokenizer(words, is_split_into_words=True, truncation=True,
                            max_length=cfg.max_length)
            enc["labels"] = [align_labels(enc.word_ids(i), [to_id(t, split) for t in tags])
                             for i, tags in enumerate(batch[cfg.tags_column])]
            return enc

        out[split] = ds.map(batch_encode, batched=True, remove_columns=ds.column_names,
                            num_proc=cfg.preprocessing_num_workers, desc=f"tokenizing {split}")
    return out


def prepare_token_classification_data(cfg: Any, tokenizer: Any, seed: int,
                                      label_names: list[str] | None = None) -> PreparedData:
    """Load, tag-align and tokenize the data (or take it from the cache)."""
    import datasets

    start = time.perf_counter()
    if label_names is not None:
        cfg = dataclasses.replace(cfg, label_names=list(label_names))

    def build():
        raw = read_splits(cfg)
        require_columns(raw, cfg, ["tokens_column", "tags_column"])
        notes = check_sentences(raw, cfg)
        raw = limit_splits(raw, cfg, seed)
        names = tag_names(raw, cfg)
        splits = datasets.DatasetDict(encode(raw, tokenizer, names, cfg))
        return splits, {"label_names": names, "stats": token_stats(splits), "notes": notes}

    parts = {
        "kind": "token-classification", "seed": seed,
        "files": {key: files_digest(getattr(cfg, key)) for key in SPLIT_KEYS.values()},
        "tokenizer": tokenizer_digest(tokenizer),
        "settings": {k: getattr(cfg, k) for k in ("format", "tokens_column", "tags_column", "label_names",
                                                  "validation_split", "max_train_samples", "max_eval_samples",
                                                  "max_length", "column_names", "column_map")},
    }
    splits, meta, hit = cached_dataset(cfg.cache and cfg.dataset_name is None, cfg.cache_dir, parts, build)
    for line in meta["notes"]:
        note(line)
    return PreparedData(splits=splits, label_names=meta["label_names"], from_cache=hit,
                        seconds=time.perf_counter() - start, stats=meta["stats"])
