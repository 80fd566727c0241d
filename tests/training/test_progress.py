"""llmkit's progress display: aligned per-step lines and short evaluation lines off a terminal, a live bar on one,
--quiet / --verbose, only the main process writing. The real CLI's output of every command:
tests/test_quiet_run.py."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from llmkit.training import progress
from llmkit.training.progress import TrainingProgress, clock, headline
from tests.recipes.helpers import invoke

EVAL = {"eval_loss": 0.6898, "eval_accuracy": 0.5625, "eval_precision": 0.2812, "eval_precision_negative": 0.5625,
        "eval_precision_positive": 0.0, "eval_f1": 0.36, "eval_f1_negative": 0.72, "eval_runtime": 0.2474,
        "eval_samples_per_second": 129.3, "eval_steps_per_second": 4.042, "epoch": 0.375}


def state(step: int, tokens: int, main: bool = True, max_steps: int = 2105):
    return SimpleNamespace(global_step=step, max_steps=max_steps, num_input_tokens_seen=tokens,
                           is_world_process_zero=main)


def drive(display: TrainingProgress, main: bool = True, args=None) -> None:
    """A run's callbacks as the Trainer calls them: two logging steps with an evaluation after the first."""
    display.on_train_begin(args, state(0, 0, main), None)
    for step in (1, 2):
        display.on_step_begin(None, state(step - 1, 100 * (step - 1), main), None)
        display.on_step_end(None, state(step, 100 * step, main), None)
        display.on_log(None, state(step, 100 * step, main), None,
                        logs={"loss": 0.41234, "grad_norm": 0.57, "learning_rate": 9.1e-05, "epoch": 0.1 * step,
                              "num_input_tokens_seen": 100 * step})
        if step == 1:
            display.on_prediction_step(args, state(1, 100, main), None, eval_dataloader=[1, 2])
            display.on_log(None, state(1, 100, main), None, logs=EVAL)
            display.on_evaluate(None, state(1, 100, main), None)
    display.on_train_end(None, state(2, 200, main), None)


@pytest.fixture(autouse=True)
def clock_of_half_seconds(monkeypatch):
    """Each reading of the clock half a second after the one before."""
    ticks = iter(range(1, 10_000))
    monkeypatch.setattr(progress, "perf_counter", lambda: next(ticks) / 2)


def test_lines_off_a_terminal_are_aligned_and_evaluations_show_the_headline(capsys):
    drive(TrainingProgress(level="normal", live=False))
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [  # a clock tick of 0.5 s per reading; step 2's rate leaves the evaluation out
        "step    1/2105  loss 0.4123   lr 9.1e-05      100 tok/s  0:02 / ~52:38",
        "eval  step    1/2105  loss=0.6898  accuracy=0.5625  precision=0.2812  f1=0.36",
        "step    2/2105  loss 0.4123   lr 9.1e-05      200 tok/s  0:04 / ~1:01:24"]


def test_verbose_shows_every_metric_and_quiet_nothing(capsys):
    drive(TrainingProgress(level="verbose", live=False))
    out = capsys.readouterr().out.splitlines()
    assert "grad_norm 0.57" in out[0]
    assert "precision_negative=0.5625" in out[1] and "runtime=0.2474" in out[1]
    drive(TrainingProgress(level="quiet", live=False))
    drive(TrainingProgress(level="verbose", live=True), main=False)  # another rank of a launch
    assert capsys.readouterr() == ("", "")


def test_a_terminal_gets_a_live_bar_with_loss_rate_and_eta(capsys):
    drive(TrainingProgress(level="normal", live=True))
    out, err = capsys.readouterr()
    assert re.search(r"train 100%\|.*\| 2/2105 \[", err) is None  # 2 of 2105 steps: not done
    assert re.search(r"train +0%\|.*\| 2/2105 \[\d+:\d\d<[^,]+, loss 0\.4123  lr 9\.1e-05  [\d,]+ tok/s\]", err), err
    assert "eval " in err  # the evaluation's own bar
    assert [line[:6] for line in out.splitlines()] == ["step  ", "eval  ", "step  "]  # written above the bar


def test_disable_tqdm_on_a_terminal_gives_step_lines_instead_of_the_bar(capsys):
    from types import SimpleNamespace

    drive(TrainingProgress(level="normal", live=True), args=SimpleNamespace(disable_tqdm=True))
    out, err = capsys.readouterr()
    assert err == ""
    assert [line[:6] for line in out.splitlines()] == ["step  ", "eval  ", "step  "]


def test_headline_and_clock():
    assert [name for name, _ in headline({"test_loss": 1.0, "test_f1": 0.5, "test_f1_PER": 0.4,
                                          "test_runtime": 1.0}, "test")] == ["loss", "f1"]
    assert (clock(192), clock(3160), clock(3723)) == ("3:12", "52:40", "1:02:03")


def test_quiet_and_verbose_together_are_refused():
    result = invoke("--quiet", "--verbose", "finetune", "missing.yaml")
    assert result.exit_code == 2
    assert "error: --quiet and --verbose contradict each other; give one of them." in result.output


def test_a_real_run_on_a_terminal_names_the_test_splits_bar_test(tmp_path, tiny_config, sentiment_data, monkeypatch,
                                                                   capfd):
    from tests.conftest import write_yaml

    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    tiny_config["data"]["test_file"] = str(sentiment_data / "dev.csv")
    tiny_config["train"].update(num_train_epochs=1, disable_tqdm=False, eval_strategy="no", save_strategy="no")
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config))
    assert result.exit_code == 0, result.output
    bars = {m.group(1) for m in re.finditer(r"(?m)(?:^|\r)(\w+) +\d+%\|", capfd.readouterr().err + result.output)}
    assert bars == {"train", "eval", "test"}, bars
