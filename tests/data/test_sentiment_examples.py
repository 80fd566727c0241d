"""The committed quickstart dataset (examples/sentiment) and its generator agree and are well formed."""

from __future__ import annotations

import collections
import csv
import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "make_sentiment_data.py"
DATA_DIR = REPO_ROOT / "examples" / "sentiment"
SIZES = {"train": 400, "dev": 200, "test": 200}


@pytest.fixture(scope="module")
def generator():
    """scripts/ is not a package: load the generator by path."""
    spec = importlib.util.spec_from_file_location("llmkit_make_sentiment_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    out = {}
    for name in SIZES:
        header, rows = read_rows(DATA_DIR / f"{name}.csv")
        assert header == ["text", "label"], f"{name}.csv header"
        out[name] = rows
    return out


def test_committed_files_match_generator(generator, tmp_path):
    paths = generator.write_splits(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{name}.csv" for name in SIZES)
    for name in SIZES:
        fresh = (tmp_path / f"{name}.csv").read_bytes()
        committed = (DATA_DIR / f"{name}.csv").read_bytes()
        assert fresh == committed, (
            f"examples/sentiment/{name}.csv differs from the generator's output; "
            "rerun: python scripts/make_sentiment_data.py --out examples/sentiment"
        )


def test_generator_is_deterministic_and_seed_dependent(generator):
    sizes = {"a": 20, "b": 10}
    assert generator.generate_splits(5, sizes) == generator.generate_splits(5, sizes)
    assert generator.generate_splits(5, sizes) != generator.generate_splits(6, sizes)


def test_generator_rejects_odd_sizes(generator):
    with pytest.raises(ValueError):
        generator.generate_splits(13, {"train": 3})


@pytest.mark.parametrize("name", list(SIZES))
def test_size_and_class_balance(splits, name):
    rows = splits[name]
    assert len(rows) == SIZES[name]
    counts = collections.Counter(row["label"] for row in rows)
    assert counts == {"positive": SIZES[name] // 2, "negative": SIZES[name] // 2}


@pytest.mark.parametrize("name", list(SIZES))
def test_rows_are_clean(splits, name):
    for row in splits[name]:
        assert set(row) == {"text", "label"}, row
        text = row["text"]
        assert text == text.strip() and text, row
        assert "\n" not in text and "  " not in text, row
        assert text[0].isupper() and text[-1] in ".!?", row


@pytest.mark.parametrize("name", list(SIZES))
def test_no_duplicates_within_split(splits, name):
    texts = [row["text"] for row in splits[name]]
    assert len(texts) == len(set(texts))


def test_no_overlap_between_splits(splits):
    texts = {name: {row["text"] for row in rows} for name, rows in splits.items()}
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts[a] & texts[b], f"{a} and {b} share texts"
    # Case and punctuation differences do not count as new texts either.
    normalised = [" ".join(t.lower().rstrip(".!?").split()) for rows in splits.values() for t in
                  (row["text"] for row in rows)]
    assert len(normalised) == len(set(normalised))
