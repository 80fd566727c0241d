"""Sequence-classification data: label sets, label ids (single- and multi-label), tokenization, caching."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from llmkit.data.cache import cached_dataset, files_digest, tokenizer_digest
from llmkit.data.loading import SPLIT_KEYS, load_raw_splits, require_columns
from llmkit.errors import UserError


@dataclass
class PreparedData:
    """Tokenized splits plus what the recipe needs to know about them."""

    splits: Any  # datasets.DatasetDict with input_ids/attention_mask/(token_type_ids)/labels
    label_names: list[str]
    from_cache: bool
    seconds: float
    stats: dict = field(default_factory=dict)


def _label_list(value: Any, separator: str | None) -> list:
    """The labels of one multi-label example: a list as is, a string split on the separator, none for empty."""
    if value is None:
        return []  # an empty csv cell
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and separator is not None:
        return [part.strip() for part in value.split(separator) if part.strip()]
    return [value]


def infer_label_names(train: Any, cfg: Any, multi_label: bool) -> list[str]:
    """Class names: from data.label_names, else the sorted distinct labels of the training data."""
    if cfg.label_names:
        return [str(n) for n in cfg.label_names]
    if train is None:
        raise UserError("data.label_names: there is no training data to read the label set from; list the "
                        "classes in data.label_names.")
    values = train[cfg.label_column]
    if multi_label:
        values = [v for row in values for v in _label_list(row, cfg.label_separator)]
    distinct = {_normalise(v) for v in values if v is not None}
    if any(isinstance(v, float) for v in distinct):
        raise UserError(f"data.label_column: {cfg.label_column!r} holds fractional numbers (e.g. "
                        f"{next(v for v in distinct if isinstance(v, float))}); classification needs class labels.")
    return [str(v) for v in sorted(distinct, key=lambda v: (not isinstance(v, (int, float)), v))]


def _normalise(value: Any) -> Any:
    """1.0 -> 1 and True -> 1, so numeric labels read from csv/json compare equal."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def label_mapper(label_names: list[str], cfg: Any, integers_index: bool):
    """A function from a raw label value to its class id, raising `KeyError` for values outside the set.

    Integer labels index into `label_names` when the names came from the
    config (`integers_index`); otherwise labels are matched by name.
    """
    by_name = {name: i for i, name in enumerate(label_names)}

    def to_id(value: Any) -> int:
        value = _normalise(value)
        if integers_index and isinstance(value, int):
            if 0 <= value < len(label_names):
                return value
            raise KeyError(value)
        return by_name[str(value)]

    return to_id


def encode_labels(splits: dict, label_names: list[str], cfg: Any, multi_label: bool) -> dict:
    """Replace the label column by `labels`: class ids, or multi-hot float vectors for multi-label."""
    to_id = label_mapper(label_names, cfg, integers_index=bool(cfg.label_names))
    out = {}
    for name, ds in splits.items():
        raw = ds[cfg.label_column]
        bad: dict[str, int] = {}
        encoded = []
        for value in raw:
            values = _label_list(value, cfg.label_separator) if multi_label else [value]
            ids = []
            for v in values:
                try:
                    ids.append(to_id(v))
                except KeyError:
                    bad[repr(v)] = bad.get(repr(v), 0) + 1
            encoded.append([1.0 if i in ids else 0.0 for i in range(len(label_names))] if multi_label
                           else (ids[0] if ids else -1))
        if bad:
            shown = ", ".join(f"{v} ({n} row{'s' if n > 1 else ''})" for v, n in list(bad.items())[:5])
            origin = "data.label_names" if cfg.label_names else "the training data"
            source = getattr(cfg, SPLIT_KEYS[name]) or cfg.dataset_name
            raise UserError(f"data.label_column: the {name} data ({source}) "
                            f"has labels outside the label set: {shown}. The label set (from {origin}) is: "
                            f"{', '.join(label_names)}. Fix the data, or list every class in data.label_names.")
        out[name] = ds.remove_columns([cfg.label_column]).add_column("labels", encoded)
    return out


def tokenize_splits(splits: dict, tokenizer: Any, cfg: Any) -> dict:
    """Tokenize text (or text pairs) with truncation and no padding: batches are padded dynamically."""
    text_cols = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])

    def encode(batch: dict) -> dict:
        texts = [[str(t) if t is not None else "" for t in batch[c]] for c in text_cols]
        return tokenizer(*texts, truncation=True, max_length=cfg.max_length)

    out = {}
    for name, ds in splits.items():
        drop = [c for c in ds.column_names if c != "labels"]
        out[name] = ds.map(encode, batched=True, remove_columns=drop, num_proc=cfg.preprocessing_num_workers,
                           desc=f"tokenizing {name}")
    return out


def token_stats(splits: Any) -> dict:
    """Example and token counts per split (after truncation)."""
    stats = {}
    for name, ds in splits.items():
        lengths = [len(ids) for ids in ds["input_ids"]]
        stats[name] = {"examples": len(lengths), "tokens": int(sum(lengths)),
                       "max_tokens": int(max(lengths)) if lengths else 0}
    return stats


def prepare_classification_data(cfg: Any, tokenizer: Any, multi_label: bool, seed: int,
                                label_names: list[str] | None = None) -> PreparedData:
    """Load, label and tokenize the data (or take it from the cache).

    `label_names` fixes the label set (e.g. a trained model's `id2label` for
    evaluation); otherwise it comes from data.label_names or the training data.
    """
    import datasets

    start = time.perf_counter()
    if label_names is not None:
        cfg = dataclasses.replace(cfg, label_names=list(label_names))

    def build():
        raw = load_raw_splits(cfg, seed)
        require_columns(raw, cfg, ["text_column", "text_pair_column", "label_column"])
        names = infer_label_names(raw.get("train"), cfg, multi_label)
        if len(names) < 2 and not multi_label:
            raise UserError(f"data.label_column: the training data has only one class ({', '.join(names)}); "
                            "classification needs at least two.")
        splits = datasets.DatasetDict(tokenize_splits(encode_labels(raw, names, cfg, multi_label), tokenizer, cfg))
        return splits, {"label_names": names, "stats": token_stats(splits)}

    parts = {
        "kind": "sequence-classification", "multi_label": multi_label, "seed": seed,
        "files": {key: files_digest(getattr(cfg, key)) for key in SPLIT_KEYS.values()},
        "hub": [cfg.dataset_name, cfg.dataset_config, cfg.train_split, cfg.eval_split, cfg.test_split],
        "tokenizer": tokenizer_digest(tokenizer),
        "settings": {k: getattr(cfg, k) for k in ("format", "column_names", "column_map", "text_column",
                                                  "text_pair_column", "label_column", "label_names", "label_separator",
                                                  "validation_split", "max_train_samples", "max_eval_samples",
                                                  "max_length")},
    }
    cacheable = cfg.cache and cfg.dataset_name is None  # hub data changes under the same name; datasets caches it
    splits, meta, hit = cached_dataset(cacheable, cfg.cache_dir, parts, build)
    return PreparedData(splits=splits, label_names=meta["label_names"], from_cache=hit,
                        seconds=time.perf_counter() - start, stats=meta["stats"])

