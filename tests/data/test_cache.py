"""The tokenized-data cache: hits for identical inputs, misses (never stale hits) for any change."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from llmkit.config import load_config
from llmkit.data.cache import META_FILE, cache_key, file_digest, tokenizer_digest
from llmkit.data.classification import prepare_classification_data
from llmkit.recipes.finetune import FinetuneConfig
from tests.conftest import sentiment_rows, train_tokenizer, write_csv


def load_tokenizer(path, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)


@pytest.fixture(scope="module")
def small_vocab_tokenizer_dir(tmp_path_factory) -> str:
    return train_tokenizer(tmp_path_factory.mktemp("small-vocab"), vocab_size=60)


def cache_dir() -> Path:
    return Path(os.environ["LLMKIT_CACHE"]) / "data"


def entries() -> list[Path]:
    return sorted(cache_dir().iterdir()) if cache_dir().is_dir() else []


def data_cfg(tiny_config: dict, **data):
    raw = dict(tiny_config)
    raw["data"] = {"max_length": 32, **data}
    return load_config(FinetuneConfig, None, data=raw).data


def prepare(cfg, tokenizer, multi_label=False, seed=0):
    return prepare_classification_data(cfg, tokenizer, multi_label, seed)


def columns(data) -> dict:
    return {name: {"input_ids": list(ds["input_ids"]), "labels": list(ds["labels"])}
            for name, ds in data.splits.items()}


@pytest.fixture
def files(sentiment_data) -> dict:
    return {"train_file": str(sentiment_data / "train.csv"), "validation_file": str(sentiment_data / "dev.csv")}


# ---------------------------------------------------------------- hits


def test_second_identical_call_is_a_hit(tiny_config, files, tokenizer_dir):
    first = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    assert first.from_cache is False
    assert len(entries()) == 1
    # A fresh config and a freshly loaded tokenizer, as in a second `llmkit finetune` run.
    second = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    assert second.from_cache is True
    assert len(entries()) == 1
    assert second.label_names == first.label_names == ["negative", "positive"]
    assert columns(second) == columns(first)
    assert second.splits["train"]["labels"][:4] == [0, 1, 0, 1]
    assert len(second.splits["train"]) == 64 and len(second.splits["validation"]) == 32
    assert list(second.splits["train"]["attention_mask"]) == list(first.splits["train"]["attention_mask"])
    assert second.stats == first.stats
    assert second.stats["train"]["examples"] == 64


def test_reusing_the_same_tokenizer_object_is_a_hit(tiny_config, files, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    cfg = data_cfg(tiny_config, **files)
    assert prepare(cfg, tokenizer).from_cache is False
    assert prepare(cfg, tokenizer).from_cache is True


# ---------------------------------------------------------------- misses


def test_changed_data_file_is_a_miss(tiny_config, sentiment_data, files, tokenizer_dir):
    original = (sentiment_data / "train.csv").read_bytes()
    assert prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir)).from_cache is False
    # Same size, same texts, swapped labels: only the content differs.
    swapped = original.replace(b",negative", b",NEG").replace(b",positive", b",negative").replace(b",NEG", b",positive")
    assert len(swapped) == len(original) and swapped != original
    (sentiment_data / "train.csv").write_bytes(swapped)
    changed = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    assert changed.from_cache is False
    assert changed.splits["train"]["labels"][:4] == [1, 0, 1, 0]
    assert len(entries()) == 2

    (sentiment_data / "train.csv").write_bytes(original)
    back = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    assert back.from_cache is True and back.splits["train"]["labels"][:4] == [0, 1, 0, 1]


def test_changed_validation_file_is_a_miss(tiny_config, sentiment_data, files, tokenizer_dir):
    prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    write_csv(sentiment_data / "dev.csv", sentiment_rows(8, seed=99))
    changed = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    assert changed.from_cache is False and len(changed.splits["validation"]) == 8


def test_new_file_matching_a_glob_is_a_miss(tmp_path, tiny_config, tokenizer_dir):
    write_csv(tmp_path / "parts" / "part1.csv", sentiment_rows(10, seed=1))
    pattern = str(tmp_path / "parts" / "part*.csv")
    assert prepare(data_cfg(tiny_config, train_file=pattern), load_tokenizer(tokenizer_dir)).from_cache is False
    write_csv(tmp_path / "parts" / "part2.csv", sentiment_rows(6, seed=2))
    grown = prepare(data_cfg(tiny_config, train_file=pattern), load_tokenizer(tokenizer_dir))
    assert grown.from_cache is False and len(grown.splits["train"]) == 16


def test_changed_max_length_is_a_miss(tiny_config, files, tokenizer_dir):
    long = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    assert long.stats["train"]["max_tokens"] > 6
    short = prepare(data_cfg(tiny_config, **files, max_length=6), load_tokenizer(tokenizer_dir))
    assert short.from_cache is False
    assert short.stats["train"]["max_tokens"] == 6
    assert max(len(ids) for ids in short.splits["train"]["input_ids"]) == 6
    again = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    assert again.from_cache is True and again.stats == long.stats


@pytest.fixture
def two_text_columns(tmp_path) -> str:
    rows = [{"text": r["text"], "title": s["text"], "label": r["label"], "kind": s["label"]}
            for r, s in zip(sentiment_rows(24, seed=1), sentiment_rows(24, seed=7, labels=("b", "a")))]
    return str(write_csv(tmp_path / "two.csv", rows))


@pytest.mark.parametrize("change, check", [
    ({"text_column": "title"}, lambda d: d.stats["train"]["examples"] == 24),
    ({"label_column": "kind"}, lambda d: d.label_names == ["a", "b"] and d.splits["train"]["labels"][:2] == [1, 0]),
    ({"label_names": ["positive", "negative"]},
     lambda d: d.label_names == ["positive", "negative"] and d.splits["train"]["labels"][:2] == [1, 0]),
    ({"text_pair_column": "title"}, lambda d: d.splits["train"]["input_ids"][0].count(3) == 2),
    ({"max_train_samples": 5}, lambda d: len(d.splits["train"]) == 5),
    ({"validation_split": 0.25}, lambda d: len(d.splits["train"]) == 18 and len(d.splits["validation"]) == 6),
    ({"format": "csv"}, lambda d: len(d.splits["train"]) == 24),
], ids=["text_column", "label_column", "label_names", "text_pair_column", "max_train_samples", "validation_split",
        "format"])
def test_changed_data_setting_is_a_miss(tiny_config, two_text_columns, tokenizer_dir, change, check):
    base = prepare(data_cfg(tiny_config, train_file=two_text_columns), load_tokenizer(tokenizer_dir))
    assert base.from_cache is False and base.label_names == ["negative", "positive"]
    assert base.splits["train"]["labels"][:2] == [0, 1]
    changed = prepare(data_cfg(tiny_config, train_file=two_text_columns, **change), load_tokenizer(tokenizer_dir))
    assert changed.from_cache is False
    assert check(changed)
    assert len(entries()) == 2


def test_text_column_change_gives_the_new_texts(tiny_config, two_text_columns, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    titles = [r["text"] for r in sentiment_rows(24, seed=7)]
    prepare(data_cfg(tiny_config, train_file=two_text_columns), load_tokenizer(tokenizer_dir))
    changed = prepare(data_cfg(tiny_config, train_file=two_text_columns, text_column="title"),
                      load_tokenizer(tokenizer_dir))
    assert changed.splits["train"]["input_ids"][0] == tokenizer(titles[0], truncation=True, max_length=32)["input_ids"]


def test_seed_and_multi_label_are_part_of_the_key(tiny_config, two_text_columns, tokenizer_dir):
    cfg = data_cfg(tiny_config, train_file=two_text_columns, max_train_samples=5)
    a = prepare(cfg, load_tokenizer(tokenizer_dir), seed=0)
    b = prepare(cfg, load_tokenizer(tokenizer_dir), seed=1)
    assert (a.from_cache, b.from_cache) == (False, False)
    assert list(a.splits["train"]["input_ids"]) != list(b.splits["train"]["input_ids"])
    multi = prepare(cfg, load_tokenizer(tokenizer_dir), multi_label=True, seed=0)
    assert multi.from_cache is False
    assert all(isinstance(row, list) and len(row) == 2 for row in multi.splits["train"]["labels"])
    assert len(entries()) == 3


def test_changed_disk_split_name_is_a_miss(tmp_path, tiny_config, tokenizer_dir):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(sentiment_rows(12, seed=1)),
                          "dev_a": datasets.Dataset.from_list(sentiment_rows(4, seed=2)),
                          "dev_b": datasets.Dataset.from_list(sentiment_rows(6, seed=3))}).save_to_disk(
        str(tmp_path / "dd"))
    paths = {"train_file": str(tmp_path / "dd"), "validation_file": str(tmp_path / "dd")}
    a = prepare(data_cfg(tiny_config, **paths, eval_split="dev_a"), load_tokenizer(tokenizer_dir))
    b = prepare(data_cfg(tiny_config, **paths, eval_split="dev_b"), load_tokenizer(tokenizer_dir))
    assert (a.from_cache, b.from_cache) == (False, False)
    assert (len(a.splits["validation"]), len(b.splits["validation"])) == (4, 6)


def test_tokenizer_saved_with_other_model_max_length_is_a_miss(tmp_path, tiny_config, files, tokenizer_dir):
    load_tokenizer(tokenizer_dir, model_max_length=64).save_pretrained(tmp_path / "tok64")
    other = load_tokenizer(tmp_path / "tok64")
    assert other.model_max_length == 64
    assert prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir)).from_cache is False
    assert prepare(data_cfg(tiny_config, **files), other).from_cache is False
    assert len(entries()) == 2


def test_tokenizer_with_other_vocabulary_is_a_miss(tiny_config, files, tokenizer_dir, small_vocab_tokenizer_dir):
    base = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    small = load_tokenizer(small_vocab_tokenizer_dir)
    assert len(small) < len(load_tokenizer(tokenizer_dir))
    other = prepare(data_cfg(tiny_config, **files), small)
    assert other.from_cache is False
    text = sentiment_rows(64, seed=1)[0]["text"]
    assert other.splits["train"]["input_ids"][0] == small(text, truncation=True, max_length=32)["input_ids"]
    assert other.splits["train"]["input_ids"][0] != base.splits["train"]["input_ids"][0]


@pytest.mark.parametrize("attribute, value", [("padding_side", "left"), ("truncation_side", "left")])
def test_tokenizer_side_settings_are_misses(tiny_config, files, tokenizer_dir, attribute, value):
    base = prepare(data_cfg(tiny_config, **files, max_length=5), load_tokenizer(tokenizer_dir))
    tokenizer = load_tokenizer(tokenizer_dir)
    assert getattr(tokenizer, attribute) == "right"
    setattr(tokenizer, attribute, value)
    other = prepare(data_cfg(tiny_config, **files, max_length=5), tokenizer)
    assert other.from_cache is False
    text = sentiment_rows(64, seed=1)[0]["text"]
    assert other.splits["train"]["input_ids"][0] == tokenizer(text, truncation=True, max_length=5)["input_ids"]
    if attribute == "truncation_side":  # the output really differs: a stale hit would be wrong data
        assert other.splits["train"]["input_ids"][0] != base.splits["train"]["input_ids"][0]


def test_added_token_is_a_miss(tiny_config, files, tokenizer_dir):
    prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.add_tokens(["zzsuperbzz"]) == 1
    assert prepare(data_cfg(tiny_config, **files), tokenizer).from_cache is False
    assert len(entries()) == 2


# ---------------------------------------------------------------- storage


def test_cache_false_never_stores(tiny_config, files, tokenizer_dir):
    for _ in range(2):
        data = prepare(data_cfg(tiny_config, **files, cache=False), load_tokenizer(tokenizer_dir))
        assert data.from_cache is False
        assert len(data.splits["train"]) == 64
    assert entries() == []
    assert not any(Path(os.environ["LLMKIT_CACHE"]).rglob("*"))


def test_cache_layout_and_meta(tiny_config, files, tokenizer_dir):
    data = prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    [entry] = entries()
    assert entry.parent == Path(os.environ["LLMKIT_CACHE"]) / "data"
    assert re.fullmatch(r"[0-9a-f]{24}", entry.name)
    assert (entry / META_FILE).is_file()
    assert (entry / "dataset_dict.json").is_file()
    assert sorted(p.name for p in entry.iterdir() if p.is_dir()) == ["train", "validation"]
    meta = json.loads((entry / META_FILE).read_text())
    assert meta["label_names"] == ["negative", "positive"]
    assert meta["stats"] == data.stats
    parts = meta["key_parts"]
    assert parts["files"]["train_file"] == [file_digest(files["train_file"])]
    assert parts["files"]["validation_file"] == [file_digest(files["validation_file"])]
    assert parts["files"]["test_file"] is None
    assert parts["tokenizer"] == tokenizer_digest(load_tokenizer(tokenizer_dir))
    assert parts["settings"]["max_length"] == 32 and parts["settings"]["text_column"] == "text"
    assert cache_key(parts) == entry.name
    assert not any(".tmp-" in p.name for p in cache_dir().iterdir())


def test_configured_cache_dir_overrides_the_environment(tmp_path, tiny_config, files, tokenizer_dir):
    mine = tmp_path / "mycache"
    a = prepare(data_cfg(tiny_config, **files, cache_dir=str(mine)), load_tokenizer(tokenizer_dir))
    b = prepare(data_cfg(tiny_config, **files, cache_dir=str(mine)), load_tokenizer(tokenizer_dir))
    assert (a.from_cache, b.from_cache) == (False, True)
    assert len(list((mine / "data").iterdir())) == 1
    assert entries() == []


# ---------------------------------------------------------------- digests


def test_file_digest_of_a_file(tmp_path):
    a = tmp_path / "a" / "train.csv"
    a.parent.mkdir()
    a.write_text("text,label\ngood,1\n")
    digest = file_digest(a)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert file_digest(str(a)) == digest
    copy = tmp_path / "b" / "train.csv"
    copy.parent.mkdir()
    shutil.copy(a, copy)
    assert file_digest(copy) == digest  # content-keyed, not path-keyed
    a.write_text("text,label\ngood,0\n")  # same size, one byte differs
    assert file_digest(a) != digest
    a.write_text("text,label\ngood,1\n")
    assert file_digest(a) == digest


def test_file_digest_of_a_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list(sentiment_rows(8, seed=1)).save_to_disk(str(tmp_path / "saved"))
    digest = file_digest(tmp_path / "saved")
    assert file_digest(tmp_path / "saved") == digest
    shutil.copytree(tmp_path / "saved", tmp_path / "elsewhere" / "saved")
    assert file_digest(tmp_path / "elsewhere" / "saved") == digest

    datasets.Dataset.from_list(sentiment_rows(8, seed=2)).save_to_disk(str(tmp_path / "other"))
    assert file_digest(tmp_path / "other") != digest

    (tmp_path / "saved" / "extra.txt").write_text("x")
    assert file_digest(tmp_path / "saved") != digest
    (tmp_path / "saved" / "extra.txt").unlink()
    assert file_digest(tmp_path / "saved") == digest

    arrow = next((tmp_path / "saved").glob("*.arrow"))
    raw = bytearray(arrow.read_bytes())
    raw[-1] ^= 0xFF
    arrow.write_bytes(bytes(raw))
    assert file_digest(tmp_path / "saved") != digest


def test_a_folder_does_not_hash_like_the_file_inside_it(tmp_path):
    """A folder holding small.tsv and small.tsv itself are different inputs (one a save_to_disk directory to
    load, one a table): their digests differ, and so do two folders that split the same bytes differently."""
    (tmp_path / "small.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (tmp_path / "folder").mkdir()
    shutil.copy(tmp_path / "small.tsv", tmp_path / "folder" / "small.tsv")
    assert file_digest(tmp_path / "folder") != file_digest(tmp_path / "small.tsv")
    for name, parts in {"one": {"ab": "cd"}, "two": {"a": "bcd"}}.items():
        (tmp_path / name).mkdir()
        for file, text in parts.items():
            (tmp_path / name / file).write_text(text)
    assert file_digest(tmp_path / "one") != file_digest(tmp_path / "two")


def test_a_cached_table_is_not_reused_for_the_folder_holding_it(tiny_config, files, tokenizer_dir, tmp_path):
    """The audit's case: after preparing train.csv, a folder holding that file is not answered from the cache
    (it is read as a save_to_disk directory and refused, as without a cache)."""
    from llmkit.errors import UserError

    prepare(data_cfg(tiny_config, **files), load_tokenizer(tokenizer_dir))
    folder = tmp_path / "adir"
    folder.mkdir()
    shutil.copy(files["train_file"], folder / Path(files["train_file"]).name)
    with pytest.raises(UserError, match="save_to_disk"):
        prepare(data_cfg(tiny_config, **{**files, "train_file": str(folder)}), load_tokenizer(tokenizer_dir))


def test_tokenizer_digest(tmp_path, tokenizer_dir, small_vocab_tokenizer_dir):
    one, two = load_tokenizer(tokenizer_dir), load_tokenizer(tokenizer_dir)
    digest = tokenizer_digest(one)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert tokenizer_digest(two) == digest
    one.save_pretrained(tmp_path / "copy")
    assert tokenizer_digest(load_tokenizer(tmp_path / "copy")) == digest  # a saved copy is the same tokenizer
    assert tokenizer_digest(load_tokenizer(small_vocab_tokenizer_dir)) != digest
    two.padding_side = "left"
    assert tokenizer_digest(two) != digest
    assert tokenizer_digest(load_tokenizer(tokenizer_dir, model_max_length=64)) != digest
