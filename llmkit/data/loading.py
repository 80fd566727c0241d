"""Read raw data (local files, save_to_disk directories, hub datasets) into train/validation/test splits."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from pathlib import Path
from typing import Any

from llmkit.data.columns import column_values
from llmkit.data.formats import detect_format
from llmkit.errors import UserError, first_line, not_utf8_message

# What datasets/pandas say about a file with no rows (header only) or no bytes at all.
EMPTY_MARKERS = ("corresponds to no data", "No columns to parse")
HEADER_LIMIT = 1 << 20  # a first line longer than this is data, not a header
SPLIT_KEYS = {"train": "train_file", "validation": "validation_file", "test": "test_file"}
TEXT_FORMATS = ("csv", "tsv", "json", "jsonl", "text", "conll")


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def load_file_split(key: str, files: str | list[str], cfg: Any, text_sample_by: str = "line"):
    """Load one split from local files with the `datasets` builders (csv/json/parquet/text) or load_from_disk.

    Text files become one row per line, per blank-line-separated paragraph or per file (`text_sample_by`:
    line | paragraph | document, the `datasets` text builder's option)."""
    files = _as_list(files)
    option = option_name(key)
    fmt = cfg.format if cfg.format != "auto" else detect_format(files[0])
    kinds = {cfg.format if cfg.format != "auto" else detect_format(f) for f in files}
    if len(kinds) > 1:
        raise UserError(f"{option}: the files mix formats ({', '.join(sorted(map(str, kinds)))}); use one format.")
    if fmt in TEXT_FORMATS:
        for f in files:
            check_text_file(key, f, fmt)
    if fmt in ("csv", "tsv"):
        for f in files:
            _check_csv_header(key, f, fmt, cfg)
    if fmt == "conll":
        from llmkit.data.formats import read_conll

        return read_conll(key, files, cfg)
    if fmt == "disk":
        if len(files) > 1:
            raise UserError(f"{option}: give one save_to_disk directory, not {len(files)}.")
        return _load_from_disk(key, files[0], cfg)
    builder, kwargs = builder_arguments(fmt, files, cfg, text_sample_by)
    ds = _read_with_datasets(option, files, fmt, builder, kwargs)
    if builder == "csv" and any(c.startswith("__index_level_") for c in ds.column_names):
        named = [c for c in ds.column_names if not c.startswith("__index_level_")]
        tab = fmt == "tsv"
        raise UserError(f"{option}: the rows of {', '.join(files)} have more fields than the "
                        f"{'data.column_names' if cfg.column_names else 'header'} names ({', '.join(named)}), so "
                        "their first fields would be read as row labels and every column would shift by one. "
                        + ("A text must not hold a tab in a .tsv file; remove the extra tabs." if tab else
                           "A field that holds the delimiter must be in double quotes; check the delimiter and "
                           "quoting."))
    return ds


def builder_arguments(fmt: str, files: list[str], cfg: Any, text_sample_by: str) -> tuple[str, dict]:
    """The `datasets` builder for a format and its options (cells as written, header-less column names)."""
    builder, kwargs = {"csv": ("csv", {}), "tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
                       "json": ("json", {}), "jsonl": ("json", {}), "parquet": ("parquet", {}),
                       "text": ("text", {"sample_by": text_sample_by})}[fmt]
    if builder == "csv":
        # Cells are read as written: pandas would turn a text "NA" or "None" into a missing value, and a text
        # column of numbers with one empty cell into floats ("7" -> "7.0"). Only an empty cell is missing.
        kwargs.update(keep_default_na=False, na_values=[""],
                      converters={column: str for column in _file_text_columns(cfg)})
    if cfg.column_names:
        if builder != "csv":
            raise UserError(f"data.column_names: only applies to csv/tsv files without a header; {files[0]} is {fmt}.")
        kwargs.update(column_names=list(cfg.column_names), header=None)
    return builder, kwargs


def _read_with_datasets(option: str, files: list[str], fmt: str, builder: str, kwargs: dict):
    import datasets

    # Raw arrow files go to a throw-away directory: llmkit caches the tokenized result itself.
    with tempfile.TemporaryDirectory(prefix="llmkit-raw-") as tmp, _quiet_datasets():
        try:
            return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=tmp,
                                         keep_in_memory=True, **kwargs)
        except (datasets.exceptions.DatasetGenerationError, ValueError, TypeError) as e:
            cause = e.__cause__ or e
            if any(s in str(cause) for s in EMPTY_MARKERS):
                raise UserError(f"{option}: {', '.join(files)} is empty (0 rows). Check the file.") from None
            fix = (" Check the delimiter and quoting: a field that holds the delimiter must be in double quotes "
                   "(for a header-less file, name the columns with data.column_names)." if builder == "csv" else "")
            raise UserError(f"{option}: cannot read {', '.join(files)} as {fmt}: {first_line(cause)}{fix}") from None


def option_name(key: str) -> str:
    """The config option a file setting is reported under: data.train_file for `train_file`; a dotted key (e.g.
    distill.unlabeled) as it is."""
    return key if "." in key else f"data.{key}"


def _file_text_columns(cfg: Any) -> list[str]:
    """The file's names of the configured text columns (before data.column_map renames them)."""
    wanted = [getattr(cfg, k, None) for k in ("text_column", "text_pair_column")]
    renamed_from = {new: old for old, new in (cfg.column_map or {}).items()}
    return [renamed_from.get(c, c) for c in wanted if c]


def _first_csv_row(path: str, fmt: str) -> list[str] | None:
    """The fields of the first line of a csv/tsv file; None when it is too long to be a header or does not parse
    on its own (a quoted field that runs onto the next line)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:  # a byte-order mark is not part of the first name
        line = fh.readline(HEADER_LIMIT)
    if len(line) >= HEADER_LIMIT:
        return None
    quoting = {"quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
    try:
        return next(csv.reader([line.rstrip("\r\n")], delimiter="\t" if fmt == "tsv" else ",", strict=True,
                               **quoting), None)
    except csv.Error:
        return None


def _check_csv_header(key: str, path: str, fmt: str, cfg: Any) -> None:
    """With data.column_names the file must not start with a header (it would become a training row); without,
    its header must not name a column twice (pandas would silently rename the second 'label' to 'label.1')."""
    first = _first_csv_row(path, fmt)
    if not first:
        return
    if cfg.column_names:
        if _looks_like_header(first, cfg):
            raise UserError(f"data.column_names: the first row of {path} is a header ({', '.join(first)}); remove "
                            "data.column_names (the header names the columns) or delete that row.")
        return
    seen = set()
    for name in first:
        if name in seen:
            raise UserError(f"{option_name(key)}: the header of {path} names the column {name!r} twice "
                            f"({', '.join(first)}); give every column its own name.")
        seen.add(name)


def _looks_like_header(cells: list[str], cfg: Any) -> bool:
    """True when the row's cells are column names: those of data.column_names, their data.column_map names, or
    the text/label columns the config reads. Every cell, or at least two of them, must be one (compared without
    case or surrounding spaces), so a text that merely contains the word 'text' is data."""
    known = set(cfg.column_names) | set((cfg.column_map or {}).values())
    known |= {getattr(cfg, k) for k in ("text_column", "text_pair_column", "label_column", "tokens_column",
                                        "tags_column") if getattr(cfg, k, None)}
    known = {str(n).strip().lower() for n in known}
    matches = sum(1 for c in cells if c.strip().lower() in known)
    return matches == len(cells) or matches >= 2


def check_text_file(key: str, path: str, fmt: str) -> None:
    """Refuse a text data file that is not UTF-8, is empty, or (json/jsonl) does not hold records.

    `datasets` reports these as a stack of pandas/pyarrow errors with a byte offset (or a bare StopIteration for
    an empty jsonl, or a crash of the process for a .json file holding `null`); checking first names the file, the
    line and the fix. Only runs when the prepared data is not cached, and reads the file once more than `datasets`
    does.
    """
    option = option_name(key)
    problem = not_utf8_message(path)
    if problem:
        raise UserError(f"{option}: {problem}")
    if fmt == "jsonl":
        _check_json_lines(option, path, ".jsonl")
    elif fmt == "json":
        _check_json_file(option, path)
    elif _is_blank(path):
        what = "0 bytes" if os.path.getsize(path) == 0 else "only blank lines"
        raise UserError(f"{option}: {path} is empty ({what}); check that this is the right file.")


def _is_blank(path: str) -> bool:
    with open(path, encoding="utf-8") as fh:
        for chunk in iter(lambda: fh.read(1 << 16), ""):
            if chunk.strip():
                return False
    return True


RECORD_EXAMPLE = '{"text": "...", "label": "..."}'


def _check_json_lines(option: str, path: str, kind: str) -> int:
    """Every non-blank line must parse as a JSON object (one record); at least one line must. Returns the count."""
    import json

    layout = ("each line of a .jsonl file must be one record" if kind == ".jsonl" else
              "a .json file holds an array of records, or one record per line")
    records = 0
    with open(path, encoding="utf-8-sig") as fh:  # a byte-order mark (Windows editors write one) is fine
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{option}: {path} line {number} is not valid JSON ({e.msg}, column {e.colno}); "
                                "fix or remove that line (JSON lines: one complete object per line).") from None
            if not isinstance(record, dict):
                raise UserError(f"{option}: {path} line {number} holds a JSON {_json_kind(record)} "
                                f"({line.strip()[:40]}), not a JSON object; {layout}, such as {RECORD_EXAMPLE}.")
            records += 1
    if not records:
        raise UserError(f"{option}: {path} is empty (no JSON lines); check that this is the right file.")
    return records


def _check_json_file(option: str, path: str) -> None:
    """A .json file holds an array of records, or JSON lines (one record per line, as `datasets` also reads them).

    pyarrow crashes the whole process on a file that is `null` or an array whose first item is `null`; those and
    other values that are not records are refused here. One object is one record (`datasets` reads it as one row;
    an object holding the records, {"data": [...]}, is named by `require_columns`). An array is only looked into up
    to its first item: later items that are not records fail in `datasets` with a message, or become rows without
    a text or label, which the data checks report.
    """
    with open(path, encoding="utf-8-sig") as fh:
        first_line = fh.readline()
        head = (first_line + fh.read(1 << 12)).lstrip()
    if head.startswith("["):
        item = head[1:].lstrip()[:1]
        if item and item not in "{]":
            kind = {"n": "null", "t": "boolean", "f": "boolean", '"': "string", "[": "array"}.get(item, "number")
            raise UserError(f"{option}: the first item of the array in {path} is a JSON {kind}, not an object; "
                            f"every item must be one record such as {RECORD_EXAMPLE}.")
        return
    if _parses(first_line):
        _check_json_lines(option, path, ".json")
        return
    value = _load_json(option, path)  # one value over several lines (a pretty-printed object)
    if isinstance(value, dict):
        return
    raise UserError(f"{option}: {path} holds a JSON {_json_kind(value)}, not an array of records; write the "
                    f"records as [{RECORD_EXAMPLE}, ...] (or one per line in a .jsonl file).")


def _parses(line: str) -> bool:
    """True when the line is a whole JSON value on its own (so the file is JSON lines)."""
    import json

    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _load_json(option: str, path: str):
    import json

    with open(path, encoding="utf-8-sig") as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as e:
            raise UserError(f"{option}: {path} is not valid JSON ({e.msg}, line {e.lineno}, column {e.colno}); a "
                            f".json file holds an array of records [{RECORD_EXAMPLE}, ...] or one record per "
                            "line.") from None


def _json_kind(value) -> str:
    names = {list: "array", dict: "object", str: "string", bool: "boolean", int: "number", float: "number",
             type(None): "null"}
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

    option = option_name(key)
    try:
        loaded = datasets.load_from_disk(path, keep_in_memory=True)
    except FileNotFoundError as e:
        raise UserError(f"{option}: {path} is not a datasets save_to_disk directory ({first_line(e)}). Give a data "
                        "file (csv, tsv, json, jsonl, parquet, txt, conll) or a folder save_to_disk wrote.") from None
    if isinstance(loaded, datasets.DatasetDict):
        # a file setting outside data (distill.unlabeled) reads the training split
        setting = {"validation_file": "eval_split", "test_file": "test_split"}.get(key, "train_split")
        split = getattr(cfg, setting)
        if split not in loaded:
            raise UserError(f"{option}: {path} has splits {', '.join(loaded)}, not {split!r}; set "
                            f"data.{setting} to one of them.")
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
    return limit_splits(read_splits(cfg, text_sample_by), cfg, seed)


def read_splits(cfg: Any, text_sample_by: str = "line") -> dict:
    """The splits as read (files or hub, columns renamed by data.column_map), in file order: checks that name
    rows run on these, before validation_split and the sample limits reorder them."""
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
    return splits


def same_data_as_training(cfg: Any) -> list[str]:
    """The evaluation settings (validation_file, test_file) that name the training file itself, or a file with
    the same bytes (sizes compared first, so large files are read only when they could match)."""
    import filecmp

    def files(value: Any) -> list[Path] | None:
        if not value or not isinstance(value, (str, list)):
            return None
        paths = [Path(v).expanduser() for v in ([value] if isinstance(value, str) else value) if isinstance(v, str)]
        return paths if paths and all(p.is_file() for p in paths) else None

    train = files(getattr(cfg, "train_file", None))
    same = []
    for key in ("validation_file", "test_file"):
        other = files(getattr(cfg, key, None))
        if train is None or other is None or len(other) != len(train):
            continue
        if [p.stat().st_size for p in other] == [p.stat().st_size for p in train] and (
                [p.resolve() for p in other] == [p.resolve() for p in train]
                or all(filecmp.cmp(a, b, shallow=False) for a, b in zip(other, train))):
            same.append(key)
    return same


def limit_splits(splits: dict, cfg: Any, seed: int) -> dict:
    """data.validation_split (a seeded hold-out of the training data), then the sample limits."""
    splits = dict(splits)
    if cfg.validation_split is not None and "train" in splits:
        if "validation" in splits:
            raise UserError("data.validation_split: the data already has a validation split; drop one of them.")
        try:
            parts = splits["train"].train_test_split(test_size=cfg.validation_split, seed=seed)
        except ValueError:  # scikit-learn's wording: "With n_samples=3, test_size=0.1 ... will be empty"
            raise UserError(f"data.validation_split: {cfg.validation_split} of the {len(splits['train'])} training "
                            "rows leaves the training or the validation data empty; give more training data, a "
                            "validation_split that keeps at least one row on each side, or data.validation_file."
                            ) from None
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
    kept = [c for c in ds.column_names if c not in column_map]
    taken = [(old, new) for old, new in column_map.items() if new in kept]
    if taken:
        old, new = taken[0]
        raise UserError(f"data.column_map: renaming {old!r} to {new!r} clashes with the {split} data's own column "
                        f"{new!r} (its columns are: {', '.join(ds.column_names)}); rename {new!r} too, or map "
                        f"{old!r} to another name.")
    return ds.rename_columns(dict(column_map))


def split_source(cfg: Any, split: str) -> str:
    """Where a split comes from, for messages: its file(s), or the hub dataset."""
    files = getattr(cfg, SPLIT_KEYS.get(split, ""), None) or cfg.dataset_name
    return ", ".join(_as_list(files)) if files else split


def require_columns(splits: dict, cfg: Any, keys: list[str], shown: dict[str, str] | None = None) -> None:
    """Every configured column (data.<key>) must exist in every split; list the real columns otherwise. `shown`
    names the config key a column comes from where it is not data.<key> (eval.generation.prompt_column, say)."""
    for key in keys:
        column = getattr(cfg, key)
        if column is None:
            continue
        setting = (shown or {}).get(key, f"data.{key}")
        for name, ds in splits.items():
            if column not in ds.column_names:
                source = getattr(cfg, SPLIT_KEYS[name], None) or cfg.dataset_name
                fix = ("; for a file without a header row, name the columns with data.column_names"
                       if cfg.column_names is None else "")
                raise UserError(f"{setting}: {column!r} is not a column of the {name} data ({source}). Its columns "
                                f"are: {', '.join(ds.column_names)}. Set {setting} to one of them{fix}."
                                f"{_column_hint(ds, setting, column, source)}")


def _column_hint(ds: Any, setting: str, column: str, source: str) -> str:
    """Why a wanted column may be missing: spaces around a header name, or records nested in one JSON object."""
    if len(ds.column_names) == 1:  # the whole header is one column: the file's delimiter is not the one read
        header = ds.column_names[0]
        fmt = next((f for d, f in ((",", "csv"), ("\t", "tsv")) if d in header), None)
        if fmt is not None:
            return (f" The whole header {header!r} was read as one column: the file is {fmt} (its delimiter is not "
                    f"the one its name or data.format says). Name it .{fmt}, or set data.format: {fmt}.")
    spaced = [c for c in ds.column_names if c.strip() == column]
    if spaced:
        return (f" The header has {spaced[0]!r}, with spaces around the name: remove them from the header, or set "
                f"{setting}: {spaced[0]!r} (in quotes).")
    if len(ds) == 1:
        for name in ds.column_names:
            value = ds[0][name]
            if isinstance(value, list) and value and isinstance(value[0], dict) and column in value[0]:
                return (f" The file holds one JSON object with the records under {name!r}; llmkit reads an array "
                        f"of records, or one record per line: extract them, e.g. jq '.{name}' {source} > "
                        "records.json.")
    return ""


# ---------------------------------------------------------------- cell checks


def note(message: str) -> None:
    """Print a line about the data on stdout, once per launch (every process of torchrun reads the data)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"data: {message}", flush=True)


def rows_text(rows: list[int], limit: int = 5) -> str:
    """'row 4' / 'rows 4, 17, 30' / 'rows 4, 17, 30, 41, 52 and 7 more' (1-based row numbers)."""
    shown = ", ".join(map(str, rows[:limit]))
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def short(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def as_text(value: Any) -> str:
    """A text cell as a string: a missing cell (an empty csv field, a JSON null) is "", a number is written out."""
    return "" if value is None else value if isinstance(value, str) else str(value)


def is_empty_text(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or (isinstance(value, str) and
                                                                                 not value.strip())


TEXT_KEYS = ("text_column", "text_pair_column")


def refuse_non_text(splits: dict, cfg: Any, keys: tuple[str, ...] | list[str] = TEXT_KEYS) -> None:
    """A text cell must be a string (numbers are read as text): a list or an object (JSON data) would reach the
    model as its Python spelling, "['a', 'b']"."""
    for key, column in _text_columns(cfg, keys):
        for split, ds in splits.items():
            for row, value in enumerate(column_values(ds, column), 1):
                if isinstance(value, (list, tuple, dict)):
                    kind = "an object" if isinstance(value, dict) else "a list"
                    raise UserError(f"data.{key}: {column!r} holds {kind} in row {row} of the {split} data "
                                    f"({split_source(cfg, split)}): {short(value)}; a text column holds strings. "
                                    f"Point data.{key} at the column with the text, or flatten the data.")


def empty_text_notes(splits: dict, cfg: Any, keys: tuple[str, ...] | list[str] = TEXT_KEYS) -> list[str]:
    """Rows whose text is empty (an empty cell, a JSON null, only spaces) are kept, so that evaluation covers
    every row and predictions line up with the file, and listed in a note: the model sees only its special
    tokens for them. A split where every text is empty is refused: the column or the file is wrong."""
    refuse_non_text(splits, cfg, keys)
    notes = []
    for key, column in _text_columns(cfg, keys):
        what = "an empty text" if key == "text_column" else f"an empty second text ({column!r})"
        for split, ds in splits.items():
            rows = [row for row, value in enumerate(column_values(ds, column), 1) if is_empty_text(value)]
            if rows and len(rows) == len(ds):
                raise UserError(f"data.{key}: {column!r} is empty in every row of the {split} data "
                                f"({split_source(cfg, split)}); check the file, and that data.{key} names the "
                                f"column with the text (the columns are: {', '.join(ds.column_names)}).")
            if rows:
                notes.append(f"{len(rows)} row{'s' if len(rows) > 1 else ''} with {what} in {split} "
                             f"({rows_text(rows)}); {'they are' if len(rows) > 1 else 'it is'} kept")
    return notes


def _text_columns(cfg: Any, keys) -> list[tuple[str, str]]:
    return [(key, getattr(cfg, key)) for key in keys if getattr(cfg, key, None)]
