"""The benchmark runner's plumbing (the benchmarks themselves are run, not unit-tested: they print figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402
from common import paired_ratio, result  # noqa: E402


def test_result_records_the_ratio_and_the_target():
    r = result("x", 3.0, "tokens/s", baseline=4.0, baseline_name="plain", target=">= 0.95", meets=False,
               settings={"batch": 8})
    assert r == {"name": "x", "value": 3.0, "unit": "tokens/s", "baseline": 4.0, "baseline_name": "plain",
                 "ratio": 0.75, "target": ">= 0.95", "meets_target": False, "settings": {"batch": 8}}
    assert paired_ratio([2.0, 3.0, 10.0], [1.0, 3.0, 4.0]) == 2.0  # median of 2, 1, 2.5


def test_every_benchmark_group_resolves_to_a_function():
    for name in bench.BENCHMARKS:
        assert callable(bench.benchmark(name))


def test_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--data-dir", str(tmp_path)])
    assert "has no sst2/train.tsv" in capsys.readouterr().err
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(SystemExit):
        bench.parse_args(["--data-dir", str(tmp_path), "--only", "startup,speed"])
    assert "unknown benchmark(s) speed" in capsys.readouterr().err
    assert bench.parse_args(["--data-dir", str(tmp_path), "--only", "startup,eval"]).groups == ["startup", "eval"]


@pytest.fixture(scope="module")
def tiny_tta(tmp_path_factory, tokenizer_dir):
    """A tiny BERT saved like a downloaded checkpoint, and sst2/train.tsv + dev.tsv of synthetic reviews."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tests.conftest import sentiment_rows
    from tests.recipes.helpers import tiny_bert_config

    root = tmp_path_factory.mktemp("tta")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    BertForSequenceClassification(tiny_bert_config(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for name, n, seed in (("train", 48, 1), ("dev", 32, 2)):
        path = root / "data" / "sst2" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'positive')}\n"
                                                     for r in sentiment_rows(n, seed)))
    return root


def test_tta_runs_both_sides_as_processes_and_records_the_ratio(tiny_tta, tmp_path):
    """Both real sides (llmkit finetune on the shipped SST-2 config, the plain Trainer script) at a tiny size;
    run side by side here to keep the test short (the benchmark alternates them)."""
    from concurrent.futures import ThreadPoolExecutor

    import tta_benchmarks as tta
    from common import Context

    ctx = Context(data_dir=tiny_tta / "data", quick=True, work_dir=tmp_path, tta_rows=32,
                  tta_model=str(tiny_tta / "model"))
    train = tta.head_lines(ctx, ctx.data_dir / "sst2" / "train.tsv", 33, "train-32.tsv")
    dev = tta.dev_file(ctx, None)
    with ThreadPoolExecutor(2) as pool:
        ours, plain = (pool.submit(fn, ctx, side, train, dev, ctx.tta_model)
                       for side, fn in (("llmkit", tta.run_llmkit), ("plain", tta.run_plain)))
        sides = {"llmkit": [ours.result()], "plain": [plain.result()]}
    record = tta.tta_record(ctx, sides, 32)
    assert record["name"] == "time_to_accuracy" and record["settings"]["rows"] == 32
    assert record["paired_ratio"] == pytest.approx(sides["llmkit"][0]["seconds"] / sides["plain"][0]["seconds"],
                                                   abs=1e-4)
    assert set(record["accuracy"]) == {"llmkit", "plain"} and all(0 <= a <= 1 for a in record["accuracy"].values())
    assert record["meets_target"] == (record["paired_ratio"] <= 0.4
                                      and record["accuracy"]["llmkit"] >= record["accuracy"]["plain"])
    assert all(run["train_seconds"] > 0 for runs in sides.values() for run in runs)
    with pytest.raises(SystemExit):
        bench.parse_args(["--data-dir", str(ctx.data_dir), "--only", "tta", "--tta-rows", "0"])
