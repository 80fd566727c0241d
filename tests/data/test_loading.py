"""Reading raw data into splits and preparing classification data: formats, columns, labels, limits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llmkit.config import load_config
from llmkit.data.classification import prepare_classification_data
from llmkit.data.loading import load_raw_splits
from llmkit.errors import ConfigError, UserError
from llmkit.recipes.finetune import FinetuneConfig
from tests.conftest import sentiment_rows, write_csv


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def data_cfg(tiny_config: dict, **data):
    """The DataConfig of `tiny_config` with its data section replaced by `data` (validated and resolved)."""
    raw = dict(tiny_config)
    raw["data"] = {"max_length": 32, "cache": False, **data}
    return load_config(FinetuneConfig, None, data=raw).data


def prepare(cfg, tokenizer, multi_label=False, seed=0):
    return prepare_classification_data(cfg, tokenizer, multi_label, seed)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ids_of(tokenizer, text, pair=None, max_length=32):
    return tokenizer(text, pair, truncation=True, max_length=max_length)["input_ids"]


# ---------------------------------------------------------------- formats


def test_csv_with_header(tiny_config, sentiment_data, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"),
                   validation_file=str(sentiment_data / "dev.csv"), test_file=str(sentiment_data / "test.csv"))
    raw = load_raw_splits(cfg, seed=0)
    assert sorted(raw) == ["test", "train", "validation"]
    assert {k: len(v) for k, v in raw.items()} == {"train": 64, "validation": 32, "test": 32}
    assert raw["train"].column_names == ["text", "label"]
    rows = sentiment_rows(64, seed=1)
    assert raw["train"]["text"] == [r["text"] for r in rows]

    data = prepare(cfg, tokenizer)
    assert data.label_names == ["negative", "positive"]
    train = data.splits["train"]
    # the fixture tokenizer's model_input_names are input_ids + attention_mask; the text/label columns are gone
    assert sorted(train.column_names) == ["attention_mask", "input_ids", "labels"]
    assert train["labels"] == [i % 2 for i in range(64)]  # sentiment_rows alternates negative/positive
    assert train["input_ids"][0] == ids_of(tokenizer, rows[0]["text"])
    assert train["input_ids"][0][0] == tokenizer.cls_token_id and train["input_ids"][0][-1] == tokenizer.sep_token_id
    expected_tokens = sum(len(ids_of(tokenizer, r["text"])) for r in rows)
    assert data.stats["train"] == {"examples": 64, "tokens": expected_tokens,
                                   "max_tokens": max(len(ids) for ids in train["input_ids"])}
    assert data.stats["validation"]["examples"] == 32 and data.stats["test"]["examples"] == 32
    assert data.from_cache is False


def test_tsv_keeps_double_quotes_verbatim(tmp_path, tiny_config, tokenizer):
    texts = ['"great" acting, "lovely" music', 'it was "dull and tedious', 'a plain boring film',
             'she said "superb" twice']
    labels = ["positive", "negative", "negative", "positive"]
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in zip(texts, labels)))
    cfg = data_cfg(tiny_config, train_file=str(path))
    raw = load_raw_splits(cfg, seed=0)["train"]
    assert len(raw) == 4
    assert raw["text"] == texts
    assert raw["label"] == labels
    data = prepare(cfg, tokenizer)
    assert data.splits["train"]["labels"] == [1, 0, 0, 1]
    assert data.splits["train"]["input_ids"][0] == ids_of(tokenizer, texts[0])


def test_headerless_csv_with_column_names(tmp_path, tiny_config, tokenizer):
    rows = sentiment_rows(10, seed=4)
    path = write_csv(tmp_path / "noheader.csv", rows, header=False)
    cfg = data_cfg(tiny_config, train_file=str(path), column_names=["text", "label"])
    raw = load_raw_splits(cfg, seed=0)["train"]
    assert len(raw) == 10  # the first row is data, not a header
    assert raw.column_names == ["text", "label"]
    assert raw["text"][0] == rows[0]["text"]
    data = prepare(cfg, tokenizer)
    assert data.splits["train"]["labels"] == [i % 2 for i in range(10)]


def test_headerless_csv_without_column_names_points_to_the_option(tmp_path, tiny_config, tokenizer):
    path = write_csv(tmp_path / "noheader.csv", sentiment_rows(6, seed=4), header=False)
    cfg = data_cfg(tiny_config, train_file=str(path))
    with pytest.raises(UserError, match="data.column_names"):
        prepare(cfg, tokenizer)


def test_column_names_rejected_for_non_csv(tmp_path, tiny_config):
    path = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(4, seed=1))
    cfg = data_cfg(tiny_config, train_file=str(path), column_names=["text", "label"])
    with pytest.raises(UserError, match="only applies to csv/tsv"):
        load_raw_splits(cfg, seed=0)


def test_json_array_file(tmp_path, tiny_config, tokenizer):
    rows = sentiment_rows(12, seed=5)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows))
    cfg = data_cfg(tiny_config, train_file=str(path))
    raw = load_raw_splits(cfg, seed=0)["train"]
    assert len(raw) == 12 and sorted(raw.column_names) == ["label", "text"]
    assert raw["text"] == [r["text"] for r in rows]
    data = prepare(cfg, tokenizer)
    assert data.label_names == ["negative", "positive"]
    assert data.splits["train"]["labels"] == [i % 2 for i in range(12)]


def test_jsonl_file(tmp_path, tiny_config, tokenizer):
    rows = sentiment_rows(14, seed=6)
    cfg = data_cfg(tiny_config, train_file=str(write_jsonl(tmp_path / "train.jsonl", rows)))
    raw = load_raw_splits(cfg, seed=0)["train"]
    assert len(raw) == 14 and raw["text"] == [r["text"] for r in rows]
    data = prepare(cfg, tokenizer)
    assert data.splits["train"]["labels"] == [i % 2 for i in range(14)]
    assert data.splits["train"]["input_ids"][3] == ids_of(tokenizer, rows[3]["text"])


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv"])
def test_a_byte_order_mark_is_accepted(tmp_path, tiny_config, tokenizer, name):
    """Files saved "UTF-8 with BOM" (as some Windows editors do) read like plain UTF-8."""
    rows = sentiment_rows(6, seed=6)
    path = tmp_path / name
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    raw = load_raw_splits(data_cfg(tiny_config, train_file=str(path)), seed=0)["train"]
    assert raw.column_names == ["text", "label"] and raw["text"] == [r["text"] for r in rows]


def test_parquet_file(tmp_path, tiny_config, tokenizer):
    import datasets

    rows = sentiment_rows(16, seed=7)
    path = tmp_path / "train.parquet"
    datasets.Dataset.from_dict({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]}).to_parquet(
        str(path))
    cfg = data_cfg(tiny_config, train_file=str(path))
    raw = load_raw_splits(cfg, seed=0)["train"]
    assert len(raw) == 16 and raw.column_names == ["text", "label"]
    assert raw["text"] == [r["text"] for r in rows]
    data = prepare(cfg, tokenizer)
    assert data.splits["train"]["labels"] == [i % 2 for i in range(16)]


def test_save_to_disk_dataset(tmp_path, tiny_config, tokenizer):
    import datasets

    rows = sentiment_rows(18, seed=8)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    cfg = data_cfg(tiny_config, train_file=str(tmp_path / "saved"))
    raw = load_raw_splits(cfg, seed=0)
    assert list(raw) == ["train"]
    assert len(raw["train"]) == 18 and raw["train"]["text"] == [r["text"] for r in rows]
    data = prepare(cfg, tokenizer)
    assert data.splits["train"]["labels"] == [i % 2 for i in range(18)]


def test_save_to_disk_datasetdict_with_split_names(tmp_path, tiny_config, tokenizer):
    import datasets

    train_rows, dev_rows = sentiment_rows(20, seed=9), sentiment_rows(6, seed=10)
    datasets.DatasetDict({"fit": datasets.Dataset.from_list(train_rows),
                          "held": datasets.Dataset.from_list(dev_rows)}).save_to_disk(str(tmp_path / "dd"))
    cfg = data_cfg(tiny_config, train_file=str(tmp_path / "dd"), validation_file=str(tmp_path / "dd"),
                   train_split="fit", eval_split="held")
    raw = load_raw_splits(cfg, seed=0)
    assert {k: len(v) for k, v in raw.items()} == {"train": 20, "validation": 6}
    assert raw["validation"]["text"] == [r["text"] for r in dev_rows]
    data = prepare(cfg, tokenizer)
    assert data.splits["validation"]["labels"] == [i % 2 for i in range(6)]

    wrong = data_cfg(tiny_config, train_file=str(tmp_path / "dd"))  # default train_split "train"
    with pytest.raises(UserError) as exc:
        load_raw_splits(wrong, seed=0)
    assert "'train'" in str(exc.value) and "fit, held" in str(exc.value)


def test_several_train_files_as_list_and_glob(tmp_path, tiny_config, tokenizer):
    a, b = sentiment_rows(10, seed=11), sentiment_rows(12, seed=12)
    write_csv(tmp_path / "parts" / "part1.csv", a)
    write_csv(tmp_path / "parts" / "part2.csv", b)
    write_csv(tmp_path / "parts" / "other.csv", sentiment_rows(4, seed=13))
    expected = [r["text"] for r in a + b]

    listed = data_cfg(tiny_config, train_file=[str(tmp_path / "parts" / "part1.csv"),
                                               str(tmp_path / "parts" / "part2.csv")])
    assert load_raw_splits(listed, seed=0)["train"]["text"] == expected

    globbed = data_cfg(tiny_config, train_file=str(tmp_path / "parts" / "part*.csv"))
    assert globbed.train_file == [str((tmp_path / "parts" / f"part{i}.csv").resolve()) for i in (1, 2)]
    assert load_raw_splits(globbed, seed=0)["train"]["text"] == expected

    relative = data_cfg(tiny_config, train_file="part*.csv", data_dir=str(tmp_path / "parts"))
    assert load_raw_splits(relative, seed=0)["train"]["text"] == expected
    assert len(prepare(relative, tokenizer).splits["train"]) == 22


def test_mixed_formats_in_one_split_is_an_error(tmp_path, tiny_config):
    rows = sentiment_rows(4, seed=1)
    cfg = data_cfg(tiny_config, train_file=[str(write_csv(tmp_path / "a.csv", rows)),
                                            str(write_jsonl(tmp_path / "b.jsonl", rows))])
    with pytest.raises(UserError, match="mix formats"):
        load_raw_splits(cfg, seed=0)


# ---------------------------------------------------------------- text pairs


def test_text_pairs_have_two_segments(tmp_path, tiny_config, tokenizer_dir):
    from transformers import AutoTokenizer

    # A BERT-style tokenizer that returns segment ids (the fixture's own model_input_names omit them).
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir,
                                              model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    rows = [{"premise": "the film was great", "hypothesis": "it was lovely", "label": "entailment"},
            {"premise": "the plot was dull", "hypothesis": "the acting was superb and charming",
             "label": "contradiction"}]
    cfg = data_cfg(tiny_config, train_file=str(write_csv(tmp_path / "nli.csv", rows)), text_column="premise",
                   text_pair_column="hypothesis")
    data = prepare(cfg, tokenizer)
    assert data.label_names == ["contradiction", "entailment"]
    train = data.splits["train"]
    assert sorted(train.column_names) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert train["labels"] == [1, 0]
    for i, row in enumerate(rows):
        a, b = tokenizer.tokenize(row["premise"]), tokenizer.tokenize(row["hypothesis"])
        assert train["token_type_ids"][i] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert train["input_ids"][i] == ids_of(tokenizer, row["premise"], row["hypothesis"])
        assert train["input_ids"][i].count(tokenizer.sep_token_id) == 2


def test_text_pairs_without_segment_ids_are_still_pairs(tmp_path, tiny_config, tokenizer):
    rows = [{"a": "the film was great", "b": "it was lovely", "label": "yes"},
            {"a": "the plot was dull", "b": "superb", "label": "no"}]
    cfg = data_cfg(tiny_config, train_file=str(write_csv(tmp_path / "nli.csv", rows)), text_column="a",
                   text_pair_column="b")
    train = prepare(cfg, tokenizer).splits["train"]
    assert "token_type_ids" not in train.column_names  # follows the tokenizer's model_input_names
    sep = tokenizer.sep_token_id
    for i, row in enumerate(rows):
        ids = train["input_ids"][i]
        assert ids.count(sep) == 2
        assert ids.index(sep) == len(tokenizer.tokenize(row["a"])) + 1
        assert len(ids) == len(tokenizer.tokenize(row["a"])) + len(tokenizer.tokenize(row["b"])) + 3


def test_unknown_pair_column_is_reported(tmp_path, tiny_config, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(write_csv(tmp_path / "t.csv", sentiment_rows(4, seed=1))),
                   text_pair_column="hypothesis")
    with pytest.raises(UserError, match="data.text_pair_column: 'hypothesis' is not a column"):
        prepare(cfg, tokenizer)


# ---------------------------------------------------------------- labels


def _rows(labels, seed=20):
    texts = [r["text"] for r in sentiment_rows(len(labels), seed=seed)]
    return [{"text": t, "label": lab} for t, lab in zip(texts, labels)]


def test_string_labels_get_sorted_names(tmp_path, tiny_config, tokenizer):
    labels = ["zebra", "apple", "mango", "apple", "zebra", "mango"]
    cfg = data_cfg(tiny_config, train_file=str(write_csv(tmp_path / "t.csv", _rows(labels))))
    data = prepare(cfg, tokenizer)
    assert data.label_names == ["apple", "mango", "zebra"]
    assert data.splits["train"]["labels"] == [2, 0, 1, 0, 2, 1]


def test_integer_labels_with_label_names_keep_their_ids(tmp_path, tiny_config, tokenizer):
    labels = [1, 1, 0, 1, 0]
    cfg = data_cfg(tiny_config, train_file=str(write_jsonl(tmp_path / "t.jsonl", _rows(labels))),
                   label_names=["neg", "pos"])
    data = prepare(cfg, tokenizer)
    assert data.label_names == ["neg", "pos"]
    assert data.splits["train"]["labels"] == labels


def test_integer_labels_without_names_are_renumbered(tmp_path, tiny_config, tokenizer):
    labels = [5, 1, 3, 2, 4, 3, 1]
    cfg = data_cfg(tiny_config, train_file=str(write_csv(tmp_path / "t.csv", _rows(labels))))
    data = prepare(cfg, tokenizer)
    assert data.label_names == ["1", "2", "3", "4", "5"]
    assert data.splits["train"]["labels"] == [4, 0, 2, 1, 3, 2, 0]


def test_integer_label_names_sort_numerically(tmp_path, tiny_config, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(write_jsonl(tmp_path / "t.jsonl", _rows([10, 2, 9, 2]))))
    data = prepare(cfg, tokenizer)
    assert data.label_names == ["2", "9", "10"]
    assert data.splits["train"]["labels"] == [2, 0, 1, 0]


def test_float_labels_from_csv_behave_like_integers(tmp_path, tiny_config, tokenizer):
    train = tmp_path / "t.csv"
    train.write_text("text,label\n" + "".join(f"{r['text']},{lab}\n" for r, lab in
                                              zip(sentiment_rows(4, seed=1), ["1.0", "0.0", "1.0", "0.0"])))
    dev = write_csv(tmp_path / "d.csv", _rows([0, 1]))  # read as int64 while train is float64
    assert load_raw_splits(data_cfg(tiny_config, train_file=str(train)), 0)["train"].features["label"].dtype == \
        "float64"

    cfg = data_cfg(tiny_config, train_file=str(train), validation_file=str(dev))
    data = prepare(cfg, tokenizer)
    assert data.label_names == ["0", "1"]
    assert data.splits["train"]["labels"] == [1, 0, 1, 0]
    assert data.splits["validation"]["labels"] == [0, 1]

    named = data_cfg(tiny_config, train_file=str(train), validation_file=str(dev), label_names=["neg", "pos"])
    data = prepare(named, tokenizer)
    assert data.label_names == ["neg", "pos"]
    assert data.splits["train"]["labels"] == [1, 0, 1, 0]


def test_fractional_labels_are_rejected(tmp_path, tiny_config, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(write_jsonl(tmp_path / "t.jsonl", _rows([0.5, 1.0, 0.0]))))
    with pytest.raises(UserError, match=r"fractional numbers \(e\.g\. 0\.5\)"):
        prepare(cfg, tokenizer)


def test_validation_label_outside_the_set(tmp_path, tiny_config, tokenizer):
    train = write_csv(tmp_path / "t.csv", _rows(["negative", "positive", "negative", "positive"]))
    dev = write_csv(tmp_path / "d.csv", _rows(["positive", "neutral", "neutral"], seed=21))
    cfg = data_cfg(tiny_config, train_file=str(train), validation_file=str(dev))
    with pytest.raises(UserError) as exc:
        prepare(cfg, tokenizer)
    text = str(exc.value)
    assert "validation data" in text and str(dev.resolve()) in text
    assert "'neutral' (2 rows)" in text
    assert "The label set (from the training data) is: negative, positive." in text


def test_integer_label_outside_label_names(tmp_path, tiny_config, tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", _rows([0, 1, 0]))
    dev = write_jsonl(tmp_path / "d.jsonl", _rows([1, 2], seed=21))
    cfg = data_cfg(tiny_config, train_file=str(train), validation_file=str(dev), label_names=["neg", "pos"])
    with pytest.raises(UserError) as exc:
        prepare(cfg, tokenizer)
    assert "2 (1 row)" in str(exc.value) and "(from data.label_names) is: neg, pos" in str(exc.value)


def test_single_class_in_training_is_an_error(tmp_path, tiny_config, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(write_csv(tmp_path / "t.csv", _rows(["positive"] * 5))))
    with pytest.raises(UserError, match=r"only one class \(positive\)"):
        prepare(cfg, tokenizer)


# ---------------------------------------------------------------- multi-label


def test_multi_label_lists_in_jsonl(tmp_path, tiny_config, tokenizer):
    labels = [["sport", "art"], ["news"], [], ["art"]]
    cfg = data_cfg(tiny_config, train_file=str(write_jsonl(tmp_path / "t.jsonl", _rows(labels))))
    data = prepare(cfg, tokenizer, multi_label=True)
    assert data.label_names == ["art", "news", "sport"]
    got = data.splits["train"]["labels"]
    assert got == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert all(isinstance(v, float) for row in got for v in row)


def test_multi_label_separated_strings(tmp_path, tiny_config, tokenizer):
    tiny_config["task"]["multi_label"] = True
    labels = ["sport, art", "news", "art,news,sport", "sport"]
    train = write_csv(tmp_path / "t.csv", _rows(labels))
    dev = write_csv(tmp_path / "d.csv", _rows(["news,art", "sport"], seed=21))
    cfg = data_cfg(tiny_config, train_file=str(train), validation_file=str(dev), label_separator=",")
    data = prepare(cfg, tokenizer, multi_label=True)
    assert data.label_names == ["art", "news", "sport"]
    assert data.splits["train"]["labels"] == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert data.splits["validation"]["labels"] == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_multi_label_unknown_label_in_validation(tmp_path, tiny_config, tokenizer):
    train = write_jsonl(tmp_path / "t.jsonl", _rows([["a"], ["b"], ["a", "b"]]))
    dev = write_jsonl(tmp_path / "d.jsonl", _rows([["a", "z"]], seed=21))
    cfg = data_cfg(tiny_config, train_file=str(train), validation_file=str(dev))
    with pytest.raises(UserError, match=r"'z' \(1 row\).*is: a, b"):
        prepare(cfg, tokenizer, multi_label=True)


def test_multi_label_empty_cell_in_csv_means_no_labels(tmp_path, tiny_config, tokenizer):
    tiny_config["task"]["multi_label"] = True
    path = tmp_path / "t.csv"
    path.write_text("text,label\nthe film was great,\"a,b\"\nthe plot was dull,\nit was lovely,c\n")
    cfg = data_cfg(tiny_config, train_file=str(path), label_separator=",")
    data = prepare(cfg, tokenizer, multi_label=True)
    assert data.label_names == ["a", "b", "c"]
    assert data.splits["train"]["labels"] == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


# ---------------------------------------------------------------- splits and sample limits


def test_validation_split_is_seeded(tiny_config, sentiment_data):
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"), validation_split=0.25)
    first, again, other = load_raw_splits(cfg, seed=0), load_raw_splits(cfg, seed=0), load_raw_splits(cfg, seed=1)
    assert len(first["train"]) == 48 and len(first["validation"]) == 16
    assert first["validation"]["text"] == again["validation"]["text"]
    assert first["train"]["text"] == again["train"]["text"]
    assert sorted(first["validation"]["text"]) != sorted(other["validation"]["text"])
    everything = Counter(r["text"] for r in sentiment_rows(64, seed=1))
    assert Counter(list(first["train"]["text"]) + list(first["validation"]["text"])) == everything


def test_validation_split_feeds_prepared_data(tiny_config, sentiment_data, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"), validation_split=0.25)
    data = prepare(cfg, tokenizer)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 48, "validation": 16}
    assert data.stats["validation"]["examples"] == 16


def test_validation_split_with_validation_file_is_a_config_error(tiny_config, sentiment_data):
    with pytest.raises(ConfigError) as exc:
        data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"),
                 validation_file=str(sentiment_data / "dev.csv"), validation_split=0.25)
    assert [i.key for i in exc.value.issues] == ["data.validation_split"]
    assert "give either data.validation_file or data.validation_split, not both" in str(exc.value)


def test_validation_split_out_of_range_is_a_config_error(tiny_config, sentiment_data):
    with pytest.raises(ConfigError, match="must be between 0 and 1"):
        data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"), validation_split=1.5)


def test_max_train_samples_takes_a_seeded_sample(tiny_config, sentiment_data):
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"),
                   validation_file=str(sentiment_data / "dev.csv"), max_train_samples=10)
    a, b, c = load_raw_splits(cfg, seed=0), load_raw_splits(cfg, seed=0), load_raw_splits(cfg, seed=3)
    all_texts = [r["text"] for r in sentiment_rows(64, seed=1)]
    assert len(a["train"]) == 10 and len(a["validation"]) == 32  # eval untouched
    assert a["train"]["text"] == b["train"]["text"]
    assert set(a["train"]["text"]) <= set(all_texts)
    assert a["train"]["text"] != all_texts[:10]  # shuffled, not the head of the file
    assert a["train"]["text"] != c["train"]["text"]

    larger = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"), max_train_samples=1000)
    assert load_raw_splits(larger, seed=0)["train"]["text"] == all_texts  # no cut, no shuffle


def test_max_eval_samples_takes_the_first_rows(tiny_config, sentiment_data, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"),
                   validation_file=str(sentiment_data / "dev.csv"), test_file=str(sentiment_data / "test.csv"),
                   max_eval_samples=5)
    raw = load_raw_splits(cfg, seed=0)
    assert {k: len(v) for k, v in raw.items()} == {"train": 64, "validation": 5, "test": 5}
    assert raw["validation"]["text"] == [r["text"] for r in sentiment_rows(32, seed=2)[:5]]
    assert raw["test"]["text"] == [r["text"] for r in sentiment_rows(32, seed=3)[:5]]
    data = prepare(cfg, tokenizer)
    assert data.stats["validation"]["examples"] == 5 and data.stats["test"]["examples"] == 5


def test_sample_limits_must_be_positive(tiny_config, sentiment_data):
    with pytest.raises(ConfigError) as exc:
        data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"), max_train_samples=0, max_eval_samples=-1)
    assert "max_train_samples: must be >= 1, got 0" in str(exc.value)
    assert "max_eval_samples: must be >= 1, got -1" in str(exc.value)


# ---------------------------------------------------------------- errors


def test_unknown_text_column_lists_the_real_columns(tiny_config, sentiment_data, tokenizer):
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"), text_column="sentence")
    with pytest.raises(UserError) as exc:
        prepare(cfg, tokenizer)
    text = str(exc.value)
    assert "data.text_column: 'sentence' is not a column of the train data" in text
    assert "Its columns are: text, label." in text


def test_unknown_label_column_in_validation(tmp_path, tiny_config, sentiment_data, tokenizer):
    dev = write_csv(tmp_path / "dev.csv", [{"text": "a b", "category": "positive"}])
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"), validation_file=str(dev))
    with pytest.raises(UserError) as exc:
        prepare(cfg, tokenizer)
    assert "'label' is not a column of the validation data" in str(exc.value)
    assert "Its columns are: text, category." in str(exc.value)


@pytest.mark.parametrize("content", ["text,label\n", ""], ids=["header-only", "zero-bytes"])
def test_empty_file_is_reported(tmp_path, tiny_config, sentiment_data, content):
    (tmp_path / "empty.csv").write_text(content)
    cfg = data_cfg(tiny_config, train_file=str(sentiment_data / "train.csv"),
                   validation_file=str(tmp_path / "empty.csv"))
    with pytest.raises(UserError) as exc:
        load_raw_splits(cfg, seed=0)
    assert "empty" in str(exc.value) and "data.validation_file" in str(exc.value)


def test_missing_file_is_a_config_error(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="file not found: 'nope.csv'"):
        data_cfg(tiny_config, train_file="nope.csv", data_dir=str(tmp_path))


# ---------------------------------------------------------------- truncation


def test_max_length_truncates(tmp_path, tiny_config, tokenizer):
    words = ["the", "film", "was", "really", "great", "and", "the", "music", "was", "lovely", "and", "the", "plot",
             "was", "quite", "charming"]
    rows = [{"text": " ".join(words[: 3 + i]), "label": ["negative", "positive"][i % 2]} for i in range(12)]
    cfg = data_cfg(tiny_config, train_file=str(write_csv(tmp_path / "t.csv", rows)), max_length=8)
    data = prepare(cfg, tokenizer)
    lengths = [len(ids) for ids in data.splits["train"]["input_ids"]]
    full = [len(tokenizer(r["text"])["input_ids"]) for r in rows]
    assert max(full) > 12  # the data really is longer than max_length
    assert lengths == [min(n, 8) for n in full]
    assert max(lengths) == 8 and min(lengths) == full[0] < 8
    assert all(ids[-1] == tokenizer.sep_token_id for ids in data.splits["train"]["input_ids"])
    assert data.stats["train"]["max_tokens"] == 8 and data.stats["train"]["tokens"] == sum(lengths)


def test_a_file_read_with_the_wrong_delimiter_is_named(tmp_path):
    """A comma-separated file named .tsv reads as one column whose name is the whole header: the message says
    so and names the format to use."""
    from llmkit.config.sections import DataConfig
    from llmkit.data.loading import load_raw_splits
    from llmkit.errors import UserError

    path = tmp_path / "commas.tsv"
    path.write_text("sentence,label\ngood film,1\nbad film,0\n")
    cfg = DataConfig(validation_file=str(path), text_column="sentence")
    splits = load_raw_splits(cfg, seed=0)
    from llmkit.data.loading import require_columns

    with pytest.raises(UserError, match="The whole header 'sentence,label' was read as one column: the file is csv"):
        require_columns(splits, cfg, ["text_column"])
