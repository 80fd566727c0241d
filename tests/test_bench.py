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
