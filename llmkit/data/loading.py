"""Read raw data (local files, save_to_disk directories, hub datasets) into train/validation/test splits."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from typing import Any

from llmkit.config.sections import detect_format
from llmkit.errors import UserError, first_line, not_utf8_message

# What datasets/pandas say about a file with no rows (header only) or no bytes at all.
EMPTY_MARKERS = ("corresponds to no data", "No columns to parse")
SPLIT_KEYS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
TEXT_FORMATS = ("csv", "tsv", "json", "jsonl", "text", "conll")


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def load_file_split(key: str, files: str | list[str], cfg: Any, text_sample_by: str = "line"):
    """Load one split from local files with the `datasets` builders (csv/json/parquet/text) or load_from_disk.

    Text files become one row per line, per blank-line-separated paragraph or per file (`text_sample_by`:
    line | paragraph | document, the `datasets` text builder's option)."""
    import datasets

    files = _as_list(files)
    fmt = cfg.format if cfg.format != "auto" else detect_format(files[0])
    kinds = {cfg.format if cfg.format != "auto" else detect_format(f) for f in files}
    if len(kinds) > 1:
        raise UserError(f"data.{key}: the files mix formats ({', '.join(sorted(map(str, kinds)))}); use one format.")
    if fmt in TEXT_FORMATS:
        for f in files:
            check_text_file(key, f, fmt)
    if fmt == "conll":
        from llmkit.data.token_classification import read_conll

        return read_conll(key, files, cfg)
    if fmt == "disk":
        if len(files) > 1:
            raise UserError(f"data.{key}: give one save_to_disk directory, not {len(files)}.")
        return _load_from_disk(key, files[0], cfg)
    builder, kwargs = {"csv": ("csv", {}), "tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
                       "json": ("json", {}), "jsonl": ("json", {}), "parquet": ("parquet", {}),
                       "text": ("text", {"sample_by": text_sample_by})}[fmt]
    if cfg.column_names:
        if builder != "csv":
            raise UserError(f"data.column_names: only applies to csv/tsv files without a header; {files[0]} is {fmt}.")
        kwargs.update(column_names=list(cfg.column_names), header=None)
    # Raw arrow files go to a throw-away directory: llmkit caches the tokenized result itself.
    with tempfile.TemporaryDirectory(prefix="llmkit-raw-") as tmp, _quiet_datasets():
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=tmp, keep_in_memory=True,
                                       **kwargs)
        except (datasets.exceptions.DatasetGenerationError, ValueError, TypeError) as e:
            cause = e.__cause__ or e
            if any(s in str(cause) for s in EMPTY_MARKERS):
                raise UserError(f"data.{key}: {', '.join(files)} is empty (0 rows). Check the file.") from None
            fix = (" Check the delimiter and quoting: a field that holds the delimiter must be in double quotes "
                   "(for a header-less file, name the columns with data.column_names)." if builder == "csv" else "")
            raise UserError(f"data.{key}: cannot read {', '.join(files)} as {fmt}: {first_line(cause)}{fix}") from None
    return ds


def check_text_file(key: str, path: str, fmt: str) -> None:
    """Refuse a text data file that is not UTF-8, is empty, or (jsonl) has a line that is not a JSON object.

    `datasets` reports these as a stack of pandas/pyarrow errors with a byte offset (or a bare StopIteration for
    an empty jsonl); checking first names the file, the line and the fix. Only runs when the prepared data is
    not cached, and reads the file once more than `datasets` does.
    """
    problem = not_utf8_message(path)
    if problem:
        raise UserError(f"data.{key}: {problem}")
    if fmt == "jsonl":
        _check_json_lines(key, path)
    elif _is_blank(path):
        what = "0 bytes" if os.path.getsize(path) == 0 else "only blank lines"
        raise UserError(f"data.{key}: {path} is empty ({what}). Check the file, or point data.{key} at the right "
                        "one.")


def _is_blank(path: str) -> bool:
    with open(path, encoding="utf-8") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), ""):
            if chunk.strip():
                return False
    return True


def _check_json_lines(key: str, path: str) -> None:
    """Every non-blank line must parse as a JSON object (one record); at least one line must."""
    import json

    records = 0
    with open(path, encoding="utf-8-sig") as fh:  # a byte-order mark (Windows editors write one) is fine
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"data.{key}: {path} line {number} is not valid JSON ({e.msg}, column {e.colno}); "
                                "fix or remove that line (JSON lines: one complete object per line).") from None
            if not isinstance(record, dict):
                raise UserError(f"data.{key}: {path} line {number} holds a JSON {_json_kind(record)} "
                                f"({line.strip()[:40]}), not a JSON object; each line of a .jsonl file must be one "
                                'record such as {"text": "...", "label": "..."}.')
            records += 1
    if not records:
        raise UserError(f"data.{key}: {path} is empty (no JSON lines). Check the file, or point data.{key} at the "
                        "right one.")


def _json_kind(value) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs "Failed to read file ..." before raising; llmkit's own message (below) says it better."""
    from datasets.utils import logging as ds_logging

    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)


def _load_from_disk(key: str, path: str, cfg: Any):
    import datasets

    try:
        loaded = datasets.load_from_disk(path, keep_in_memory=True)
    except FileNotFoundError as e:
        raise UserError(f"data.{key}: {path} is not a datasets save_to_disk directory ({first_line(e)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = {"train_file": cfg.train_split, "validation_file": cfg.eval_split, "test_file": cfg.test_split}[key]
        if split not in loaded:
            raise UserError(f"data.{key}: {path} has splits {', '.join(loaded)}, not {split!r}; set "
                            f"data.{'train_split' if key == 'train_file' else 'eval_split'} to one of them.")
        return loaded[split]
    return loaded


def load_hub_splits(cfg: Any) -> dict:
    """Train/validation/test splits of a hub dataset (needs network or the HF datasets cache)."""
    import datasets

    try:
        loaded = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        raise UserError(f"data.dataset_name: cannot load {cfg.dataset_name!r}: {first_line(e)} Offline, use local "
                        "files (data.train_file) instead.") from None
    if cfg.train_split not in loaded:
        raise UserError(f"data.train_split: {cfg.dataset_name} has splits {', '.join(loaded)}, not "
                        f"{cfg.train_split!r}.")
    splits = {"train": loaded[cfg.train_split]}
    for name, split in (("validation", cfg.eval_split), ("test", cfg.test_split)):
        if split and split in loaded:
            splits[name] = loaded[split]
    return splits


def load_raw_splits(cfg: Any, seed: int, text_sample_by: str = "line") -> dict:
    """All splits as `datasets.Dataset`s: files or hub, plus validation_split and sample limits."""
    if cfg.dataset_name is not None and cfg.train_file is None:
        splits = load_hub_splits(cfg)
    else:
        splits = {name: load_file_split(key, getattr(cfg, key), cfg, text_sample_by)
                  for name, key in SPLIT_KEYS.items() if getattr(cfg, key) is not None}
    if cfg.column_map:
        splits = {name: _rename(name, ds, cfg.column_map) for name, ds in splits.items()}
    for name, ds in splits.items():
        if len(ds) == 0:
            raise UserError(f"data.{SPLIT_KEYS[name]}: the {name} data is empty (0 rows). Check the file.")
    if cfg.validation_split is not None and "train" in splits:
        if "validation" in splits:
            raise UserError("data.validation_split: the data already has a validation split; drop one of them.")
        parts = splits["train"].train_test_split(test_size=cfg.validation_split, seed=seed)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    if "train" in splits and cfg.max_train_samples is not None and cfg.max_train_samples < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(cfg.max_train_samples))
    for name in ("validation", "test"):
        if name in splits and cfg.max_eval_samples is not None and cfg.max_eval_samples < len(splits[name]):
            splits[name] = splits[name].select(range(cfg.max_eval_samples))
    return splits


def _rename(split: str, ds, column_map: dict):
    missing = [c for c in column_map if c not in ds.column_names]
    if missing:
        raise UserError(f"data.column_map: the {split} data has no column {', '.join(map(repr, missing))}. Its "
                        f"columns are: {', '.join(ds.column_names)}.")
    return ds.rename_columns(dict(column_map))


def require_columns(splits: dict, cfg: Any, keys: list[str]) -> None:
    """Every configured column (data.<key>) must exist in every split; list the real columns otherwise."""
    for key in keys:
        column = getattr(cfg, key)
        if column is None:
            continue
        for name, ds in splits.items():
            if column not in ds.column_names:
                source = getattr(cfg, SPLIT_KEYS[name], None) or cfg.dataset_name
                fix = ("; for a file without a header row, name the columns with data.column_names"
                       if cfg.column_names is None else "")
                raise UserError(f"data.{key}: {column!r} is not a column of the {name} data ({source}). Its columns "
                                f"are: {', '.join(ds.column_names)}. Set data.{key} to one of them{fix}.")

