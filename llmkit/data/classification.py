"""Sequence-classification data: label sets, label ids (single- and multi-label), tokenization, caching."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from llmkit.data.cache import cached_dataset, files_digest, tokenizer_digest
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
    short,
    split_source,
)
from llmkit.errors import UserError


@dataclass
class PreparedData:
    """Tokenized splits plus what the recipe needs to know about them."""

    splits: Any  # datasets.DatasetDict with input_ids/attention_mask/(token_type_ids)/labels
    label_names: list[str]
    from_cache: bool
    seconds: float
    stats: dict = field(default_factory=dict)


class _BadLabel(Exception):
    """A label cell that is not a class: `kind` says why (object, list, fractional, missing)."""

    def __init__(self, kind: str):
        self.kind = kind


def cell_labels(value: Any, multi_label: bool, separator: str | None) -> tuple[list, int]:
    """The labels of one row, with spaces around string labels stripped, and how many were stripped.

    Single-label rows give one label; multi-label rows a list (a list as is, a string split on the separator,
    none for an empty cell). Raises `_BadLabel` for a cell that names no class."""
    if isinstance(value, dict):
        raise _BadLabel("object")
    if isinstance(value, (list, tuple)):
        if not multi_label:
            raise _BadLabel("list")
        out, stripped = [], 0
        for item in value:
            if isinstance(item, (dict, list, tuple)):
                raise _BadLabel("object")
            labels, n = _one_label(item)
            out += labels
            stripped += n
        return out, stripped
    if multi_label and isinstance(value, str) and separator is not None:
        # "a, b": the spaces after a separator are part of the layout, not of the labels, so they are not counted
        return [part.strip() for part in value.split(separator) if part.strip()], 0
    labels, stripped = _one_label(value)
    if not labels and not multi_label:
        raise _BadLabel("missing")
    return labels, stripped


def _one_label(value: Any) -> tuple[list, int]:
    if value is None or (isinstance(value, float) and value != value):  # an empty cell (NaN in a float column)
        return [], 0
    if isinstance(value, float) and not value.is_integer():
        raise _BadLabel("fractional")
    if isinstance(value, str):
        label = value.strip()
        return ([label] if label else []), int(label != value and bool(label))
    return [value], 0


LABEL_PROBLEMS = {  # kind -> (what the rows hold, the fix); checked in this order
    "object": ("a JSON object as the label", "a label is a class name or an integer class id (multi-label: a list of "
                                             "them); point data.label_column at the column with the class, or "
                                             "flatten the data."),
    "list": ("a list as the label", "the labels are read as single-label (one class per example). For several "
                                    "labels per example set task.multi_label: true (finetune, adapter); otherwise "
                                    "give every row one label."),
    "fractional": ("fractional numbers", "classification needs class labels: names, or integer class ids (0, 1, "
                                         "...); bin a score into classes first."),
    "missing": ("no label", "every example needs a class: fill in those labels, or remove the rows."),
}


def check_labels(splits: dict, cfg: Any, multi_label: bool) -> list[str]:
    """Refuse label cells that are not classes, naming the split, its file, the rows and the fix; return notes on
    the labels whose surrounding spaces are stripped (" positive" is the class "positive")."""
    if cfg.label_separator is not None and not multi_label:
        raise UserError(f"data.label_separator: {cfg.label_separator!r} splits the labels of multi-label "
                        "classification, but these labels are read as single-label (one class per example: "
                        "task.multi_label false, or a single-label model); remove data.label_separator.")
    notes = []
    for split, ds in splits.items():
        problems: dict[str, list[tuple[int, Any]]] = {}
        stripped = 0
        for row, value in enumerate(column_values(ds, cfg.label_column), 1):
            try:
                stripped += cell_labels(value, multi_label, cfg.label_separator)[1]
            except _BadLabel as bad:
                problems.setdefault(bad.kind, []).append((row, value))
        for kind, (what, fix) in LABEL_PROBLEMS.items():
            if kind in problems:
                raise UserError(_label_problem(cfg, split, ds, kind, what, fix, problems[kind]))
        if stripped:
            notes.append(f"stripped spaces around {stripped} label value{'s' if stripped > 1 else ''} ({split})")
    return notes


def _label_problem(cfg: Any, split: str, ds: Any, kind: str, what: str, fix: str, found: list) -> str:
    column, source = cfg.label_column, split_source(cfg, split)
    rows = [row for row, _ in found]
    if kind == "missing" and len(rows) == len(ds):
        return (f"data.label_column: {column!r} is empty in every row of the {split} data ({source}); check the "
                f"file, and that data.label_column names the column with the labels (the columns are: "
                f"{', '.join(ds.column_names)}).")
    if kind == "fractional":  # e.g. 0.5: a score or a probability, not a class
        return (f"data.label_column: {column!r} of the {split} data ({source}) holds fractional numbers (e.g. "
                f"{found[0][1]}), in {rows_text(rows)}; {fix}")
    example = "" if kind == "missing" else f"; e.g. {short(found[0][1])}"
    count = f"{len(rows)} row{'s' if len(rows) > 1 else ''}"
    return (f"data.label_column: {count} of the {split} data ({source}) {'have' if len(rows) > 1 else 'has'} "
            f"{what} ({rows_text(rows)}{example}); {fix}")


def infer_label_names(train: Any, cfg: Any, multi_label: bool, fallback: list[str] | None = None) -> list[str]:
    """Class names: from data.label_names, else the sorted distinct labels of the training data, else `fallback`
    (the classes a command's own settings list, e.g. a verbalizer's keys)."""
    if cfg.label_names:
        return [str(n) for n in cfg.label_names]
    if train is None and fallback:
        return [str(n) for n in fallback]
    if train is None:
        raise UserError("data.label_names: there is no training data to read the label set from; list the "
                        "classes in data.label_names.")
    distinct = {normalise_label(v) for row in train[cfg.label_column]
                for v in cell_labels(row, multi_label, cfg.label_separator)[0]}
    if not distinct:
        raise UserError(f"data.label_column: no row of the training data ({split_source(cfg, 'train')}) has a "
                        "label, so there are no classes; fill in the labels (or check data.label_column).")
    return [str(v) for v in sorted(distinct, key=lambda v: (not isinstance(v, (int, float)), v))]


def normalise_label(value: Any) -> Any:
    """1.0 -> 1 and True -> 1, so numeric labels read from csv/json compare equal."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class LabelReading:
    """How the label values of a dataset map to the classes, decided once for all its splits (the one rule of
    every command that reads labels): a value equal to a class name, compared as text (`1` is "1"), is that
    class; integers are indices into the class list only when no value is a class name (0/1 labels with the
    names [negative, positive]). Values of both kinds, or integers that fit neither reading, are refused with
    both readings shown (`outside`, `index_note`)."""

    def __init__(self, label_names: list[str], values: set):
        self.label_names = list(label_names)
        self.names = {name: i for i, name in enumerate(label_names)}
        matched = {v for v in values if str(v) in self.names}
        integers = sorted(v for v in values if isinstance(v, int))
        self.by_index = bool(values) and not matched and len(integers) == len(values)
        last = len(label_names) - 1
        if self.by_index:
            self.outside = {v for v in integers if not 0 <= v <= last}
            self.index_note = (f" No label is a class name, so the integer labels are positions in that list (0 to "
                               f"{last}).") if self.outside else ""
        else:
            self.outside = values - matched
            self.index_note = ""
            if self.outside and integers:
                readings = ", ".join(f"{v} -> {label_names[v]}" if 0 <= v <= last else f"{v} -> none"
                                     for v in integers[:4])
                if matched:
                    why = f"here other labels ({', '.join(sorted(map(str, matched))[:4])}) are class names"
                else:
                    texts = sorted(str(v) for v in values if not isinstance(v, int))[:4]
                    why = f"here other labels ({', '.join(texts)}) are not integers"
                self.index_note = (f" Integers are read as positions in that list (0 to {last}) only when every "
                                   f"label is one and none is a class name; {why} (as positions: {readings}).")

    def __call__(self, value: Any) -> int:
        value = normalise_label(value)
        return value if self.by_index else self.names[str(value)]


def label_values(splits: dict, cfg: Any, multi_label: bool) -> set:
    """The distinct label values of every split (normalised: 1.0 and True read as 1)."""
    return {normalise_label(v) for ds in splits.values() for row in column_values(ds, cfg.label_column)
            for v in cell_labels(row, multi_label, cfg.label_separator)[0]}


MODEL_CLASSES = "the model's classes, its config.json id2label"
MODEL_FIX = "use a model trained with these labels: a model predicts only its own classes"


def encode_labels(splits: dict, label_names: list[str], cfg: Any, multi_label: bool, origin: str | None = None,
                  fix: str = "list every class in data.label_names") -> dict:
    """Replace the label column by `labels`: class ids, or multi-hot float vectors for multi-label, read by the
    one rule of LabelReading. The labels must have passed `check_labels` (which reports cells that are not
    labels at all)."""
    reading = LabelReading(label_names, label_values(splits, cfg, multi_label))
    out = {}
    for name, ds in splits.items():
        encoded, bad = [], {}
        for value in column_values(ds, cfg.label_column):
            labels = [normalise_label(v) for v in cell_labels(value, multi_label, cfg.label_separator)[0]]
            for v in labels:
                if v in reading.outside:
                    bad[repr(v)] = bad.get(repr(v), 0) + 1
            ids = [reading(v) for v in labels if v not in reading.outside]
            encoded.append([1.0 if i in ids else 0.0 for i in range(len(label_names))] if multi_label
                           else (ids[0] if ids else -1))
        if bad:
            shown = ", ".join(f"{v} ({n} row{'s' if n > 1 else ''})" for v, n in list(bad.items())[:5])
            origin = origin or ("data.label_names" if cfg.label_names else "the training data")
            source = getattr(cfg, SPLIT_KEYS[name]) or cfg.dataset_name
            raise UserError(f"data.label_column: the {name} data ({source}) has labels outside the label set: "
                            f"{shown}. The label set (from {origin}) is: {', '.join(label_names)}."
                            f"{reading.index_note} Fix the data, or {fix}.")
        out[name] = ds.remove_columns([cfg.label_column]).add_column("labels", encoded)
    return out


def tokenize_splits(splits: dict, tokenizer: Any, cfg: Any) -> dict:
    """Tokenize text (or text pairs) with truncation and no padding: batches are padded dynamically."""
    text_cols = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])

    def encode(batch: dict) -> dict:
        texts = [[as_text(t) for t in batch[c]] for c in text_cols]
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
        lengths = list_lengths(ds, "input_ids")
        stats[name] = {"examples": len(lengths), "tokens": int(lengths.sum()),
                       "max_tokens": int(lengths.max()) if len(lengths) else 0}
    return stats


def model_label_names(data_cfg: Any, labels: list[str]) -> list[str]:
    """The model's classes (its id2label), which the data's labels are read against; a data.label_names that
    names others is refused rather than silently replaced (eval and compress score what the model predicts)."""
    given = data_cfg.label_names
    if given and [str(name) for name in given] != labels:
        raise UserError(f"data.label_names: {list(given)} is not the model's classes ({', '.join(labels)}: its "
                        "config.json id2label), which the labels are read against; remove data.label_names or "
                        "list the model's classes in that order.")
    return labels


def prepare_classification_data(cfg: Any, tokenizer: Any, multi_label: bool, seed: int,
                                label_names: list[str] | None = None, from_model: bool = False) -> PreparedData:
    """Load, label and tokenize the data (or take it from the cache).

    `label_names` fixes the label set (e.g. a trained model's `id2label` for evaluation: `from_model`, which
    refuses a data.label_names naming other classes and names them in messages as the model's classes);
    otherwise it comes from data.label_names or the training data.
    """
    import datasets

    start = time.perf_counter()
    if from_model:
        label_names = model_label_names(cfg, label_names)
    if label_names is not None:
        cfg = dataclasses.replace(cfg, label_names=list(label_names))

    def build():
        raw = read_splits(cfg)
        require_columns(raw, cfg, ["text_column", "text_pair_column", "label_column"])
        notes = empty_text_notes(raw, cfg) + check_labels(raw, cfg, multi_label)
        raw = limit_splits(raw, cfg, seed)
        names = infer_label_names(raw.get("train"), cfg, multi_label)
        if len(names) < 2 and not multi_label:
            raise UserError(f"data.label_column: the training data has only one class ({', '.join(names)}); "
                            "classification needs at least two.")
        encoded = (encode_labels(raw, names, cfg, multi_label, MODEL_CLASSES, MODEL_FIX) if from_model
                   else encode_labels(raw, names, cfg, multi_label))
        splits = datasets.DatasetDict(tokenize_splits(encoded, tokenizer, cfg))
        return splits, {"label_names": names, "stats": token_stats(splits), "notes": notes}

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
    for line in meta["notes"]:  # also from the cache: the data still has those rows
        note(line)
    return PreparedData(splits=splits, label_names=meta["label_names"], from_cache=hit,
                        seconds=time.perf_counter() - start, stats=meta["stats"])

