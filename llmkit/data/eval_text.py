"""The text a language model is scored on (perplexity): a whole text file, or a text column joined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.data.loading import SPLIT_KEYS, load_file_split, require_columns
from llmkit.errors import UserError

EVAL_SPLITS = ("validation", "test")  # what eval scores; train is what a model learnt from


def read_eval_texts(cfg: Any) -> dict[str, tuple[str, str]]:
    """Every given evaluation split (validation, test), in that order: {split: (text, source)}."""
    texts = {split: read_eval_text(cfg, SPLIT_KEYS[split]) for split in EVAL_SPLITS
             if getattr(cfg, SPLIT_KEYS[split]) is not None}
    if not texts:  # a hub dataset alone: only files are read as one text
        raise UserError(f"data.dataset_name: {cfg.dataset_name} is not read for perplexity, which scores files; "
                        "set data.validation_file (or data.test_file, or pass --data PATH).")
    return texts


def read_eval_text(cfg: Any, key: str = "validation_file") -> tuple[str, str]:
    """The text of one split (data.<key>) and where it came from: a whole text file, or the text column joined by
    blank lines; with data.max_eval_samples, only the first that many lines (text files) or rows."""
    files = getattr(cfg, key)
    files = [files] if isinstance(files, str) else list(files)
    limit = cfg.max_eval_samples
    if all(Path(f).suffix.lower() == ".txt" for f in files) and cfg.format in ("auto", "text"):
        text = "".join(Path(f).read_text(encoding="utf-8") for f in files)
        if limit is not None:
            text = "".join(text.splitlines(keepends=True)[:limit])
        return text, ", ".join(files)
    ds = load_file_split(key, files, cfg)
    split = next((name for name, k in SPLIT_KEYS.items() if k == key), "validation")
    require_columns({split: ds}, cfg, ["text_column"])
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return "\n\n".join(str(t) for t in ds[cfg.text_column] if t is not None), ", ".join(files)
