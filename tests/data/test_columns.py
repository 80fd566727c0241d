"""Whole-column reads (llmkit/data/columns.py) give what iterating the dataset gives, row for row."""

import datasets
import pytest

from llmkit.data.columns import column_values, length_order, list_lengths

IDS = [[101, 7, 102], [101, 102], [101, 5, 6, 7, 102], [101, 9, 102], [], [101, 4, 4, 4, 4, 102]]


@pytest.fixture
def ds():
    return datasets.Dataset.from_dict({"text": ["a", None, "ccc", "", "e", "f f"], "input_ids": IDS,
                                       "score": [0.5, 1.0, float("nan"), 2, 3, 4]})


@pytest.mark.parametrize("view", ["plain", "selected", "shuffled", "torch", "filtered"])
def test_values_and_lengths_match_iteration(ds, view):
    ds = {"plain": lambda d: d, "selected": lambda d: d.select([4, 0, 2]), "shuffled": lambda d: d.shuffle(seed=1),
          "torch": lambda d: d.with_format("torch", columns=["input_ids"], output_all_columns=True),
          "filtered": lambda d: d.filter(lambda row: len(row["input_ids"]) != 2)}[view](ds)
    plain = ds.with_format(None)
    for name in ("text", "input_ids", "score"):
        got, want = column_values(ds, name), list(plain[name])
        assert [repr(v) for v in got] == [repr(v) for v in want]  # repr: nan == nan
    assert list_lengths(ds, "input_ids").tolist() == [len(ids) for ids in plain["input_ids"]]
    assert list_lengths(ds, "input_ids").dtype.name == "int64"


def test_a_column_datasets_decodes_is_read_through_datasets(tmp_path):
    """A JSON column of mixed types is a Json feature, stored as JSON text and decoded on access: the values are
    the decoded ones (a list stays a list, so the text checks can refuse it)."""
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"text": "a"}\n{"text": ["b", "c"]}\n')
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert column_values(ds, "text") == ["a", ["b", "c"]]


def test_anything_else_is_read_as_it_is():
    rows = {"text": ["x", "y"], "input_ids": [[1], [1, 2, 3]]}
    assert column_values(rows, "text") == ["x", "y"]
    assert list_lengths(rows, "input_ids").tolist() == [1, 3]
    assert length_order(rows, longest_first=True) == [1, 0]


def test_length_order_is_stable_both_ways(ds):
    lengths = [len(ids) for ids in IDS]
    assert length_order(ds) == sorted(range(len(IDS)), key=lambda i: lengths[i])
    assert length_order(ds, longest_first=True) == sorted(range(len(IDS)), key=lambda i: -lengths[i])
    assert length_order(ds) == [4, 1, 0, 3, 2, 5]  # the two rows of 3 ids keep their order
    assert length_order(ds.select([]), longest_first=True) == []


@pytest.mark.parametrize("unpaired", [False, True])
def test_preference_split_statistics_equal_the_row_by_row_sums(unpaired):
    """The preference data's statistics (tokens, longest row) read column lengths through Arrow; on a shuffled
    selection they equal the sums and maxima taken row by row."""
    import random

    from llmkit.data.preference import _split_stats

    rng = random.Random(0)
    columns = ("prompt_ids", "completion_ids") if unpaired else ("prompt_ids", "chosen_ids", "rejected_ids")
    rows = {name: [[7] * rng.randrange(0, 20) for _ in range(40)] for name in columns}
    if unpaired:
        rows["label"] = [rng.random() < 0.5 for _ in range(40)]
    ds = datasets.Dataset.from_dict(rows).shuffle(seed=1).select(range(25))
    plain = [dict(row) for row in ds]
    if unpaired:
        sizes = [len(r["prompt_ids"]) + len(r["completion_ids"]) for r in plain]
        desirable = sum(r["label"] for r in plain)
        want = {"examples": 25, "tokens": sum(sizes), "max_tokens": max(sizes), "desirable": desirable,
                "undesirable": 25 - desirable, "format": "x"}
    else:
        want = {"examples": 25, "format": "x",
                "tokens": sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in plain),
                "max_tokens": max(len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))
                                  for r in plain)}
    assert _split_stats(ds, {"format": "x"}) == want
    assert _split_stats(ds.select([]), {})["max_tokens"] == 0
