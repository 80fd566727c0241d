"""The text a language model is scored on (perplexity): a whole text file, or a text column joined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.data.loading import load_file_split, require_columns


def read_eval_text(cfg: Any) -> tuple[str, str]:
    """The text to score and where it came from: a whole text file, or the text column joined by blank lines;
    with data.max_eval_samples, only the first that many lines (text files) or rows."""
    key = "validation_file" if cfg.validation_file is not None else "test_file"
    files = getattr(cfg, key)
    files = [files] if isinstance(files, str) else list(files)
    limit = cfg.max_eval_samples
    if all(Path(f).suffix.lower() == ".txt" for f in files) and cfg.format in ("auto", "text"):
        text = "".join(Path(f).read_text(encoding="utf-8") for f in files)
        if limit is not None:
            text = "".join(text.splitlines(keepends=True)[:limit])
        return text, ", ".join(files)
    ds = load_file_split(key, files, cfg)
    require_columns({"validation": ds}, cfg, ["text_column"])
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))
    return "\n\n".join(str(t) for t in ds[cfg.text_column] if t is not None), ", ".join(files)
