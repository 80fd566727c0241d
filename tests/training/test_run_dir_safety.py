"""Data safety of run directories: llmkit deletes only what it created, never overwrites a finished run by
surprise, claims a directory atomically and never writes into one of its own inputs.

Each destructive case runs in a scratch directory with sentinel files whose survival is asserted byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmkit.training import rundir
from tests.conftest import write_yaml
from tests.recipes.helpers import invoke


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def quick(config: dict, **train) -> dict:
    """The tiny finetune config, 2 steps, no checkpoints."""
    return {**config, "train": {**config["train"], "max_steps": 2, "save_strategy": "no", **train}}


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_config):
    """A user's project folder as the current directory: the config, the data and a notes file in it."""
    project = tmp_path / "project"
    project.mkdir()
    data = Path(tiny_config["data"]["train_file"]).parent
    (project / "data").mkdir()
    for name in ("train.csv", "dev.csv"):
        (project / "data" / name).write_bytes((data / name).read_bytes())
    (project / "notes.txt").write_text("three months of experiments\n")
    config = quick(tiny_config)
    config["data"] = {**config["data"], "train_file": "data/train.csv", "validation_file": "data/dev.csv"}
    config["output_dir"] = "runs/base"
    write_yaml(project / "cfg.yaml", config)
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return project


def finished_run(workdir: Path) -> Path:
    result = invoke("finetune", "cfg.yaml")
    assert result.exit_code == 0, result.output
    return workdir / "runs" / "base"


def refused(result, *texts: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in texts:
        assert text in result.output, result.output
    return result.output


# ---------------------------------------------------------------- --overwrite deletes only llmkit's run directories


def test_overwrite_never_deletes_the_current_directory(workdir):
    before = snapshot(workdir)
    refused(invoke("finetune", "cfg.yaml", "-o", ".", "--overwrite"), "current directory", "Nothing was changed")
    assert snapshot(workdir) == before


def test_overwrite_never_deletes_a_directory_above_the_current_one(workdir, monkeypatch):
    (workdir / "sub").mkdir()
    monkeypatch.chdir(workdir / "sub")
    (workdir / rundir.MARKER).write_text('{"command": "finetune"}\n')  # even a marked one
    before = snapshot(workdir)
    refused(invoke("finetune", workdir / "cfg.yaml", "-o", str(workdir), "--overwrite",
                   f"data.data_dir={workdir}"), "above the current one")
    assert snapshot(workdir) == before


def test_overwrite_never_deletes_home(workdir, tmp_path):
    home = tmp_path / "home"
    (home / "thesis.tex").write_text("chapter 1\n")
    (home / rundir.MARKER).write_text('{"command": "finetune"}\n')
    before = snapshot(home)
    refused(invoke("finetune", "cfg.yaml", "-o", str(home), "--overwrite"), "home directory")
    assert snapshot(home) == before


def test_overwrite_refuses_a_directory_llmkit_did_not_create(workdir):
    mine = workdir / "results"
    mine.mkdir()
    (mine / "paper.pdf").write_bytes(b"%PDF")
    before = snapshot(workdir)
    out = refused(invoke("finetune", "cfg.yaml", "-o", "results", "--overwrite"), "was not created by llmkit",
                  "paper.pdf", rundir.MARKER)
    assert "delete it yourself" in out
    assert snapshot(workdir) == before


def test_overwrite_refuses_a_run_directory_holding_the_data(workdir):
    (workdir / rundir.MARKER).write_text('{"command": "finetune"}\n')
    sub = workdir / "data"
    (sub / rundir.MARKER).write_text('{"command": "finetune"}\n')
    before = snapshot(workdir)
    refused(invoke("finetune", "cfg.yaml", "-o", "data", "--overwrite"), "data.train_file", "would delete it")
    assert snapshot(workdir) == before


def test_overwrite_replaces_an_llmkit_run(workdir):
    run = finished_run(workdir)
    marker = json.loads((run / rundir.MARKER).read_text())
    assert marker["command"] == "finetune" and marker["smoke"] is False
    (run / "old-plot.png").write_bytes(b"old")
    result = invoke("finetune", "cfg.yaml", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (run / "old-plot.png").exists()
    assert (run / "model" / "config.json").is_file() and (run / rundir.MARKER).is_file()
    assert not (run / rundir.LOCK).exists()  # given back at the end


def test_a_bad_config_with_overwrite_leaves_the_run(workdir):
    run = finished_run(workdir)
    before = snapshot(run)
    refused(invoke("finetune", "cfg.yaml", "--overwrite", "train.num_train_epochs=1e309", "train.max_steps=-1"),
            "train.num_train_epochs", "finite")
    refused(invoke("finetune", "cfg.yaml", "--overwrite", "train.num_train_epochs=.inf", "train.max_steps=-1"),
            "train.num_train_epochs")
    assert snapshot(run) == before


# ---------------------------------------------------------------- a command's output is never one of its inputs


def test_eval_into_the_run_it_evaluates_is_refused(workdir):
    run = finished_run(workdir)
    before = snapshot(run)
    for extra in ((), ("--overwrite",)):
        refused(invoke("eval", "runs/base", "--data", "data/dev.csv", "-o", "runs/base", *extra),
                "can never be one of its inputs")
    assert snapshot(run) == before


def test_distill_into_its_teacher_is_refused(workdir):
    run = finished_run(workdir)
    before = snapshot(run)
    config = {"distill": {"teacher": "runs/base", "student": {"from_teacher": {"keep_layers": [0]}}},
              "data": {"train_file": "data/train.csv", "validation_file": "data/dev.csv", "max_length": 32},
              "train": {"max_steps": 2, "precision": "fp32", "save_strategy": "no"}, "output_dir": "runs/base"}
    write_yaml(workdir / "distill.yaml", config)
    for extra in ((), ("--overwrite",), ("--dry-run",)):
        refused(invoke("distill", "distill.yaml", *extra), "distill.teacher", "can never be one of its inputs")
    assert snapshot(run) == before


# ---------------------------------------------------------------- finished runs and resume


def test_resume_auto_on_a_finished_run_is_refused(workdir):
    run = finished_run(workdir)
    before = snapshot(run)
    refused(invoke("finetune", "cfg.yaml", "train.resume=auto"), "finished run", "at step 2", "--overwrite",
            "--output-dir")
    refused(invoke("finetune", "cfg.yaml", "train.resume=auto", "--dry-run"), "finished run")
    assert snapshot(run) == before


def test_resume_into_a_directory_llmkit_did_not_create_is_refused(workdir):
    mine = workdir / "results"
    mine.mkdir()
    (mine / "paper.pdf").write_bytes(b"%PDF")
    before = snapshot(workdir)
    refused(invoke("finetune", "cfg.yaml", "-o", "results", "train.resume=auto"), "not an llmkit run directory")
    assert snapshot(workdir) == before


def test_resume_auto_continues_an_unfinished_run(workdir):
    """A run with a checkpoint and no metrics.json resumes (the refusal is only for finished runs)."""
    result = invoke("finetune", "cfg.yaml", "train.save_strategy=steps", "train.save_steps=1", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    run = workdir / "runs" / "base"
    (run / "metrics.json").unlink()
    result = invoke("finetune", "cfg.yaml", "train.save_strategy=steps", "train.save_steps=1", "train.max_steps=2",
                    "train.resume=auto")
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output and (run / "metrics.json").is_file()


# ---------------------------------------------------------------- smoke replaces only smoke runs


def test_smoke_never_replaces_a_real_run(workdir):
    run = finished_run(workdir)
    target = workdir / "runs2" / "finetune-cfg"
    target.parent.mkdir()
    run.rename(target)
    before = snapshot(target)
    result = invoke("smoke", "cfg.yaml", "-o", "runs2")
    assert result.exit_code == 1, result.output
    assert "holds a real finetune run, not a smoke run" in result.output
    assert snapshot(target) == before


def test_smoke_replaces_its_own_run(workdir):
    for _ in range(2):
        result = invoke("finetune", "cfg.yaml", "--smoke")
        assert result.exit_code == 0, result.output
    marker = json.loads((workdir / "smoke" / "finetune-cfg" / rundir.MARKER).read_text())
    assert marker["smoke"] is True


# ---------------------------------------------------------------- claiming a directory


def test_a_directory_in_use_by_a_live_process_is_refused(workdir):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = workdir / "runs" / "base"
        run.mkdir(parents=True)
        (run / rundir.LOCK).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                   "started": rundir._process_start(holder.pid),
                                                   "command": "finetune", "time": "now"}))
        for extra in ((), ("--overwrite",), ("train.resume=auto",)):
            refused(invoke("finetune", "cfg.yaml", *extra), "being written by another llmkit process",
                    f"pid {holder.pid}")
        assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK]
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_recognised(workdir):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = finished_run(workdir)
    (run / "metrics.json").unlink()  # the run that held the lock never finished
    (run / rundir.LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "1",
                                               "command": "finetune", "time": "2026-01-01T00:00:00"}))
    refused(invoke("finetune", "cfg.yaml"), f"process {dead.pid}", "no longer running", "train.resume=auto")
    result = invoke("finetune", "cfg.yaml", "train.resume=auto")
    assert result.exit_code == 0, result.output
    assert f"process {dead.pid} left" in result.output and "taking the directory over" in result.output
    assert not (run / rundir.LOCK).exists()


def test_two_processes_racing_for_one_directory(workdir):
    """Started together on one -o: exactly one trains there; the other exits 2 without touching its files."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "llmkit", "finetune", "cfg.yaml", "-o", "runs/race",
                               f"train.seed={seed}"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for seed in (1, 2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = outputs[[p.returncode for p in procs].index(2)]
    assert "Traceback" not in loser
    assert "being written by another llmkit process" in loser or "already exists and is not empty" in loser
    winner = [p.returncode for p in procs].index(0) + 1
    saved = yaml.safe_load((workdir / "runs" / "race" / "config.yaml").read_text())
    assert saved["train"]["seed"] == winner  # the results are the winner's, whole


def test_default_run_directories_started_in_one_second_get_their_own_names(workdir):
    first = rundir.default_run_dir("finetune", "cfg.yaml")
    first.mkdir(parents=True)
    second = rundir.default_run_dir("finetune", "cfg.yaml")
    if second.name.startswith(first.name):  # the same second
        assert second.name == first.name + "-2"
    assert second != first


# ---------------------------------------------------------------- failures leave nothing that blocks a re-run


def test_a_run_failing_before_training_leaves_no_directory(workdir, monkeypatch):
    from llmkit.errors import UserError
    from llmkit.training import lifecycle

    def fail(**kwargs):
        raise UserError("something about the input")

    monkeypatch.setattr(lifecycle, "train_and_save", fail)
    refused(invoke("finetune", "cfg.yaml"), "something about the input")
    assert not (workdir / "runs" / "base").exists()


def test_a_run_failing_after_a_checkpoint_keeps_it(workdir, monkeypatch):
    from llmkit.errors import UserError
    from llmkit.training import lifecycle

    def fail(**kwargs):
        (kwargs["run_dir"] / rundir.CHECKPOINTS / "checkpoint-1").mkdir(parents=True)
        raise UserError("stopped after a checkpoint")

    monkeypatch.setattr(lifecycle, "train_and_save", fail)
    refused(invoke("finetune", "cfg.yaml"), "stopped after a checkpoint")
    run = workdir / "runs" / "base"
    assert (run / rundir.CHECKPOINTS / "checkpoint-1").is_dir() and not (run / rundir.LOCK).exists()


# ---------------------------------------------------------------- checks before writing, --dry-run included


def test_dry_run_checks_the_output_directory(workdir):
    finished_run(workdir)
    refused(invoke("finetune", "cfg.yaml", "--dry-run"), "already exists and is not empty")
    refused(invoke("finetune", "cfg.yaml", "--dry-run", "-o", "."), "already exists")
    refused(invoke("finetune", "cfg.yaml", "--dry-run", "-o", ".", "--overwrite"), "current directory")


def test_an_output_path_under_a_file_is_refused_before_loading(workdir):
    before = snapshot(workdir)
    refused(invoke("finetune", "cfg.yaml", "-o", "notes.txt/run"), "notes.txt is a file")
    refused(invoke("finetune", "cfg.yaml", "-o", "x" * 300), "255")
    assert snapshot(workdir) == before


def test_check_output_dir_refuses_an_unwritable_parent(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(Exception, match="not writable"):
        rundir.check_output_dir(tmp_path / "run")


def test_input_paths_cover_data_dir_relative_files_and_globs(tmp_path, tiny_config):
    from llmkit.config import load_config
    from llmkit.recipes.finetune import FinetuneConfig

    data = Path(tiny_config["data"]["train_file"]).parent
    config = {**tiny_config, "data": {**tiny_config["data"], "data_dir": str(data), "train_file": "tr*.csv",
                                      "validation_file": "dev.csv"}}
    cfg = load_config(FinetuneConfig, None, data=config)
    found = dict((str(path), key) for key, path in rundir.input_paths(cfg, None))
    assert found[str((data / "train.csv").resolve())] == "data.train_file"
    assert found[str((data / "dev.csv").resolve())] == "data.validation_file"
    assert str(Path(tiny_config["tokenizer"]["name_or_path"]).resolve()) in found


def test_a_data_error_leaves_no_directory(workdir):
    refused(invoke("finetune", "cfg.yaml", "data.text_column=review"), "review")
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
def test_metric_for_best_model_must_be_reported(workdir, extra):
    refused(invoke("finetune", "cfg.yaml", "train.metric_for_best_model=bleu", "train.load_best_model_at_end=true",
                   "train.eval_strategy=steps", "train.save_strategy=steps", *extra),
            "train.metric_for_best_model", "'bleu'", "choose one of: loss, accuracy", "f1_positive")
    assert not (workdir / "runs").exists()


def test_metric_names_are_what_compute_reports():
    import numpy as np

    from llmkit.metrics.classification import ClassificationMetrics
    from llmkit.metrics.token_classification import TokenClassificationMetrics

    single = ClassificationMetrics(["neg", "pos", "mixed feelings"])
    assert sorted(single.names()) == sorted(single.compute([0, 1, 2], [0, 1, 2]))
    multi = ClassificationMetrics(["a", "b"], multi_label=True)
    assert sorted(multi.names()) == sorted(multi.compute(np.eye(2), np.eye(2)))
    tags = TokenClassificationMetrics(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert sorted(tags.names()) == sorted(tags.compute([[0, 1, 2, 3]], [[0, 1, 2, 3]]))


@pytest.mark.parametrize("setting", ["train.report_to=wandb", "train.optim=adamw_bnb_8bit"])
def test_settings_needing_a_missing_package_are_refused_before_loading(workdir, setting):
    import importlib.util

    package = "wandb" if "wandb" in setting else "bitsandbytes"
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    refused(invoke("finetune", "cfg.yaml", setting, "--dry-run"), setting.split("=")[0], package)
    refused(invoke("config", "validate", "cfg.yaml", setting), setting.split("=")[0])


def test_an_eval_run_directory_used_as_a_model_is_named_as_such(tmp_path):
    """An eval run has config.yaml and eval.json but no model: the message says so (not 'did not finish, resume
    it', which an eval run cannot do); a training run without a model still gets the resume advice."""
    from llmkit.errors import UserError
    from llmkit.training.rundir import find_run_directory

    for name, extra in (("eval-run", "eval.json"), ("stopped", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("model: {name_or_path: x}\n")
        if extra:
            (tmp_path / name / extra).write_text("{}")
    with pytest.raises(UserError, match="eval run directory: it holds evaluation results, not a model"):
        find_run_directory(str(tmp_path / "eval-run"))
    with pytest.raises(UserError, match="did not finish. Resume it with train.resume=auto"):
        find_run_directory(str(tmp_path / "stopped"))
