"""`precision: auto` on CPU: bf16 only where its matmuls are timed clearly faster than fp32's, timed once per
machine and cached; LLMKIT_CPU_BF16 decides without timing; the plan line and `llmkit info` say why."""

import json
import math

import pytest

from llmkit.config import training_arguments as ta
from llmkit.errors import UserError
from tests.conftest import write_yaml
from tests.recipes.helpers import invoke


@pytest.fixture
def timed(monkeypatch, tmp_path):
    """No override, a CPU with bf16 instructions, a fresh cache, and a fake timer returning `timed.speedup`."""
    monkeypatch.delenv("LLMKIT_CPU_BF16", raising=False)
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ta, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(ta, "cuda_available", lambda: False)

    class Timer:
        speedup = 2.0
        calls = 0

        def __call__(self):
            self.calls += 1
            return self.speedup

    timer = Timer()
    monkeypatch.setattr(ta, "time_cpu_bf16_speedup", timer)
    ta.cpu_bf16_speedup.cache_clear()
    yield timer
    ta.cpu_bf16_speedup.cache_clear()


def cache_file(tmp_path):
    return tmp_path / "cache" / ta.CPU_PRECISION_FILE


def test_fast_bf16_is_chosen_and_timed_once_per_machine(timed, tmp_path):
    assert ta.resolve_precision("auto") == "bf16"
    ta.cpu_bf16_speedup.cache_clear()  # a new process: reads the file, does not time again
    assert ta.resolve_precision("auto") == "bf16" and timed.calls == 1
    assert list(json.loads(cache_file(tmp_path).read_text()).values()) == [2.0]
    assert "bf16 matmuls 2.00 x fp32" in ta.auto_precision_reason()


def test_slow_bf16_gives_fp32(timed):
    timed.speedup = 0.53  # AVX512-BF16 without AMX on this project's machine
    assert ta.resolve_precision("auto") == "fp32"
    assert "0.53 x fp32" in ta.auto_precision_reason() and "needs >= 1.25" in ta.auto_precision_reason()


@pytest.mark.parametrize("speedup, expected", [(ta.CPU_BF16_MIN_SPEEDUP, "bf16"),
                                               (ta.CPU_BF16_MIN_SPEEDUP - 0.01, "fp32")])
def test_threshold_is_inclusive(timed, speedup, expected):
    timed.speedup = speedup
    assert ta.resolve_precision("auto") == expected


def test_cached_figure_wins_over_a_new_timing(timed, tmp_path):
    cache_file(tmp_path).parent.mkdir(parents=True)
    cache_file(tmp_path).write_text(json.dumps({ta._cpu_identity(): 0.6}))
    assert ta.resolve_precision("auto") == "fp32" and timed.calls == 0


def test_another_machine_or_thread_count_is_timed_again(timed, tmp_path, monkeypatch):
    cache_file(tmp_path).parent.mkdir(parents=True)
    cache_file(tmp_path).write_text(json.dumps({"another cpu|flags|2.13|2": 0.5}))
    assert ta.resolve_precision("auto") == "bf16" and timed.calls == 1
    assert len(json.loads(cache_file(tmp_path).read_text())) == 2  # the other machine's entry is kept


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": "fast"}'])
def test_corrupt_cache_is_timed_again(timed, tmp_path, content):
    cache_file(tmp_path).parent.mkdir(parents=True)
    cache_file(tmp_path).write_text(content.replace("KEY", ta._cpu_identity()))
    assert ta.resolve_precision("auto") == "bf16" and timed.calls == 1
    assert json.loads(cache_file(tmp_path).read_text()) == {ta._cpu_identity(): 2.0}  # rewritten
    ta.cpu_bf16_speedup.cache_clear()  # a new process reads the repaired file
    assert ta.resolve_precision("auto") == "bf16" and timed.calls == 1


def test_no_bf16_instructions_is_fp32_without_timing(timed, monkeypatch):
    monkeypatch.setattr(ta, "cpu_has_fast_bf16", lambda: False)
    assert ta.resolve_precision("auto") == "fp32" and timed.calls == 0
    assert ta.auto_precision_reason() == "no bf16 instructions on this CPU"


@pytest.mark.parametrize("value, expected", [("1", "bf16"), ("0", "fp32"), (" 1 ", "bf16")])
def test_environment_decides_without_timing(timed, monkeypatch, value, expected):
    monkeypatch.setenv("LLMKIT_CPU_BF16", value)
    assert ta.resolve_precision("auto") == expected and timed.calls == 0
    assert ta.auto_precision_reason() == f"LLMKIT_CPU_BF16={value.strip()}"


def test_explicit_precision_is_never_timed(timed):
    assert [ta.resolve_precision(p) for p in ("fp32", "bf16")] == ["fp32", "bf16"] and timed.calls == 0


def test_bad_environment_value_is_a_user_error(timed, monkeypatch):
    monkeypatch.setenv("LLMKIT_CPU_BF16", "yes")
    with pytest.raises(UserError, match="LLMKIT_CPU_BF16='yes': expected 1 .* or 0"):
        ta.resolve_precision("auto")


def test_bad_environment_value_exits_2_in_a_run(tmp_path, tiny_config, monkeypatch):
    ta.cpu_bf16_speedup.cache_clear()
    monkeypatch.setenv("LLMKIT_CPU_BF16", "fast")
    monkeypatch.setattr(ta, "cuda_available", lambda: False)
    tiny_config["train"]["precision"] = "auto"
    try:
        result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config), "--dry-run")
        info = invoke("info")
    finally:
        ta.cpu_bf16_speedup.cache_clear()
    for r in (result, info):
        assert r.exit_code == 2 and "LLMKIT_CPU_BF16='fast'" in r.output and "Traceback" not in r.output


def test_plan_line_says_why_auto_resolved_as_it_did(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setattr(ta, "cuda_available", lambda: False)
    tiny_config["train"]["precision"] = "auto"
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "precision fp32 (auto: LLMKIT_CPU_BF16=0)" in result.output
    tiny_config["train"]["precision"] = "fp32"  # chosen by the user: nothing to explain
    result = invoke("finetune", write_yaml(tmp_path / "cfg2.yaml", tiny_config), "--dry-run")
    assert result.exit_code == 0 and "precision fp32" in result.output and "(auto:" not in result.output


def test_real_timing_is_a_finite_positive_ratio():
    speedup = ta.time_cpu_bf16_speedup(size=64, reps=1, rounds=1)
    assert math.isfinite(speedup) and speedup > 0
