"""Data file formats: the ones llmkit reads, and a file's format from its extension."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.errors import UserError

DATA_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "text", "disk", "conll")
EXTENSION_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet",
                     ".conll": "conll", ".txt": "text"}
DOCSTART = "-DOCSTART-"  # a CoNLL document separator line


def detect_format(path: str) -> str | None:
    """The data format of a path from its extension (a directory is a save_to_disk dataset)."""
    p = Path(path)
    if p.is_dir():
        return "disk"
    return EXTENSION_FORMATS.get(p.suffix.lower())


def read_conll(key: str, files: list[str], cfg: Any):
    """CoNLL-style files: one word per line, its tag in the last whitespace-separated column, blank lines
    between sentences, `-DOCSTART-` lines skipped. Returns a Dataset with data.tokens_column / tags_column."""
    import datasets

    tokens, tags = [], []
    for f in files:
        words, labels = [], []
        for number, line in enumerate(Path(f).read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts or parts[0] == DOCSTART:
                if words:
                    tokens.append(words)
                    tags.append(labels)
                words, labels = [], []
                continue
            if len(parts) < 2:
                raise UserError(f"data.{key}: {f} line {number} has a word but no tag ({line.strip()!r}); CoNLL "
                                "lines hold the word first and its tag last, separated by whitespace.")
            words.append(parts[0])
            labels.append(parts[-1])
        if words:
            tokens.append(words)
            tags.append(labels)
    return datasets.Dataset.from_dict({cfg.tokens_column: tokens, cfg.tags_column: tags})
