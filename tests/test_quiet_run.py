"""A normal run as a user sees it. Every command that trains (and eval), in smoke mode, in one fresh process with
the installed extras (peft, torchao, trl, sentence-transformers, tensorboard, mlflow) imported as a run imports
them, writes nothing to stderr (no third-party warning, log line or progress bar) and llmkit's aligned step
lines, never transformers' dicts; --quiet drops them. The same runs hold train.report_to: tensorboard and mlflow
(every logged number, the config, the run's name, all inside the run directory)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import sentiment_rows, write_csv, write_yaml

ROOT = Path(__file__).resolve().parent.parent
TRACKERS = [name for name in ("tensorboard", "mlflow") if importlib.util.find_spec(name) is not None]
# What tests/conftest.py sets for the test process and a user's shell does not: the CLI sets its own.
SET_BY_THE_TESTS = ("TRANSFORMERS_VERBOSITY", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM",
                    "LLMKIT_PROGRESS")
# Runs each command in this process, one after the other, as `llmkit ARGS...` would; a marker line before each.
DRIVER = """
import json, sys
from llmkit.cli import app
for args in json.loads(sys.argv[1]):
    print("=== " + next(a for a in args if a.endswith(".yaml")), flush=True)
    code = app(args, prog_name="llmkit", standalone_mode=False)
    if code:
        sys.exit(code)
"""


def configs(tmp: Path, tokenizer: str, chat_tokenizer: str, data: Path) -> dict[str, tuple[str, dict]]:
    """(command, config) of each run, by name; later runs read the `classifier` run."""
    bert = {"from_config": {"family": "bert", "num_layers": 2, "hidden_size": 32, "num_heads": 2,
                            "intermediate_size": 64, "max_position_embeddings": 64}}
    train = {"precision": "fp32", "save_strategy": "no", "seed": 0}
    csv = {"train_file": str(data / "train.csv"), "validation_file": str(data / "dev.csv"), "max_length": 32}
    classify = {"model": bert, "tokenizer": {"name_or_path": tokenizer}, "data": csv, "train": train,
                "task": {"type": "sequence-classification"}}
    (data / "text.txt").write_text("\n".join(r["text"] for r in sentiment_rows(64, seed=5)) + "\n")
    pairs = [{"prompt": f"say a {w} word", "chosen": w, "rejected": "no"} for w in ("good", "bad") * 16]
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    classifier = str(tmp / "classifier")
    return {
        "classifier": ("finetune", classify),
        "adapter": ("adapter", {**classify, "model": {"name_or_path": f"{classifier}/model"},
                                "adapter": {"method": "lora", "r": 4, "target_modules": ["query"]}}),
        "pretrain": ("pretrain", {"model": {"from_config": {**bert["from_config"], "family": "gpt2"}},
                                  "tokenizer": {"train": {"type": "bpe", "vocab_size": 300}}, "train": train,
                                  "data": {"train_file": str(data / "text.txt")},
                                  "pretrain": {"objective": "clm", "block_size": 16}}),
        "distill": ("distill", {"distill": {"teacher": classifier, "student": {"from_teacher": {"keep_layers": [0]}}},
                                "task": {"type": "sequence-classification"}, "data": csv, "train": train}),
        "prompt": ("prompt", {"model": bert, "tokenizer": {"name_or_path": tokenizer}, "train": train,
                              "data": {**csv, "label_names": ["negative", "positive"]},
                              "prompt": {"template": "{text} It was {mask}.", "mode": "few-shot",
                                         "shots_per_class": 4, "seeds": [1],
                                         "verbalizer": {"negative": ["awful"], "positive": ["great"]}}}),
        "compress": ("compress", {"model": {"name_or_path": classifier}, "data": csv, "train": train,
                                  "compress": {"steps": [{"prune": {"ffn_fraction": 0.5}}, {"recover": {}},
                                                         {"quantize": {"method": "int8-dynamic"}}],
                                               "timing_rounds": 1}}),
        "eval": ("eval", {"model": {"name_or_path": classifier}, "data": {"validation_file": csv["validation_file"]}}),
        "preference": ("finetune", {"model": {"from_config": {**bert["from_config"], "family": "llama"}},
                                    "tokenizer": {"name_or_path": chat_tokenizer}, "train": train,
                                    "task": {"type": "preference"}, "preference": {"method": "dpo"},
                                    "data": {"train_file": str(data / "pairs.jsonl"), "max_length": 32}}),
        "embedding": ("finetune", {"model": {"name_or_path": f"{classifier}/model"}, "train": train,
                                   "task": {"type": "sentence-embedding"},
                                   "data": {"train_file": str(data / "train.csv"), "text_column": "text",
                                            "text_pair_column": "text", "max_length": 32}}),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_dir, chat_tokenizer_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """Every command's smoke run in one fresh process (the classifier with train.report_to: every tracker
    installed); its folder and the finished process."""
    tmp = tmp_path_factory.mktemp("normal-run")
    data = tmp / "data"
    write_csv(data / "train.csv", sentiment_rows(64, seed=1))
    write_csv(data / "dev.csv", sentiment_rows(32, seed=2))
    args = []
    for name, (command, config) in configs(tmp, tokenizer_dir, chat_tokenizer_dir, data).items():
        if name == "classifier":
            config["train"] = {**config["train"], "report_to": TRACKERS or "none"}
        quiet = ["--quiet"] if name == "adapter" else []
        args.append([*quiet, command, str(write_yaml(tmp / f"{name}.yaml", config)), "--smoke", "-o", str(tmp / name)])
    env = {k: v for k, v in os.environ.items() if k not in SET_BY_THE_TESTS and not k.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], capture_output=True, text=True,
                          cwd=tmp, env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp, done


def test_every_command_in_smoke_mode_writes_only_llmkit_lines(runs):
    _, done = runs
    assert done.stderr == ""
    sections = dict(re.findall(r"=== (\S+)\n(.*?)(?=\n=== |\Z)", done.stdout, flags=re.S))
    assert len(sections) == 9 and "{'" not in done.stdout
    for path, output in sections.items():
        steps = re.findall(r"^step [12]/\d+  loss [\d.]+ +lr [\d.e+-]+ +[\d,]+ tok/s  \d+:\d\d", output, flags=re.M)
        if path.endswith("adapter.yaml"):  # --quiet
            assert not steps and "plan:" in output and "eval_accuracy=" in output, output
        elif not path.endswith("eval.yaml"):
            assert len(steps) >= 2, output


@pytest.mark.skipif(not TRACKERS, reason="neither tensorboard nor mlflow is installed (pip install -e .[tracking])")
def test_report_to_tensorboard_and_mlflow_write_every_metric_and_the_config_into_the_run(runs):
    tmp, _ = runs
    run = tmp / "classifier"
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    logged = {(k, r["step"]): v for r in history for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
    assert ("eval_accuracy", 3) in logged and ("loss", 1) in logged and ("train_runtime", 3) in logged
    if "tensorboard" in TRACKERS:
        check_tensorboard(run, logged)
    if "mlflow" in TRACKERS:
        check_mlflow(run, logged)
    assert not (tmp / "mlruns").exists() and not (tmp / "runs").exists()  # nothing in the working directory


def check_tensorboard(run: Path, logged: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    scalars = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    for (key, step), value in logged.items():
        tag = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
        assert scalars[(tag, step)] == pytest.approx(value, rel=1e-6), tag
    hparams = events.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    assert b"train.seed" in hparams and b"model.from_config.family" in hparams


def check_mlflow(run: Path, logged: dict) -> None:
    (mlflow_run,) = [p for p in (run / "mlruns" / "0").iterdir() if p.is_dir()]
    assert (mlflow_run / "tags" / "mlflow.runName").read_text() == "classifier"
    assert (mlflow_run / "params" / "train.seed").read_text() == "0"
    assert (mlflow_run / "params" / "data.max_length").read_text() == "32"
    metrics = {}
    for path in (mlflow_run / "metrics").iterdir():
        for line in path.read_text().splitlines():  # "timestamp value step"
            _, value, step = line.split()
            metrics[(path.name, int(step))] = float(value)
    for (key, step), value in logged.items():
        assert metrics[(key, step)] == pytest.approx(value, rel=1e-6), key


def test_debug_lets_torchaos_import_messages_through_and_a_normal_run_filters_only_them():
    import logging

    from tests.recipes.helpers import invoke

    def shown(message: str) -> bool:
        return bool(logging.getLogger("torchao").filter(
            logging.LogRecord("torchao", logging.WARNING, __file__, 1, message, None, None)))

    assert invoke("--debug", "version").exit_code == 0
    assert shown("Failed to load /x/_C_mxfp8.so: Could not load this library")
    assert invoke("version").exit_code == 0
    assert not shown("Failed to load /x/_C_mxfp8.so: Could not load this library")
    assert shown("some other torchao warning")
