"""Recipe tests: the real CLI on a 2-layer BERT built from a config, offline."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from llmkit.cli import app
from tests.conftest import write_csv, write_yaml

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_finetune_writes_run_directory_and_learns(tmp_path, tiny_config):
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "log_history.jsonl", "env.json", "report.md", "loss.png",
                 "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (run / name).exists(), name
    assert any(p.name.startswith("checkpoint-") for p in (run / "checkpoints").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 0.1, losses
    assert metrics["eval_accuracy"] >= 0.9, metrics
    for key in ("eval_loss", "eval_f1", "eval_precision_negative", "eval_recall_positive", "train_runtime",
                "train_tokens_per_second", "trainable_params"):
        assert key in metrics, key
    model_config = json.loads((run / "model/config.json").read_text())
    assert model_config["id2label"] == {"0": "negative", "1": "positive"}
    assert "Confusion matrix" in (run / "report.md").read_text()
    assert (run / "confusion_matrix_validation.png").stat().st_size > 0
    # The saved config is re-runnable as is.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == 2e-3
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 1 and env["precision"] == "fp32"


def _history(run):
    return [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]


def test_multi_label_classification(tmp_path, tiny_config, sentiment_data):
    rows = [{"text": r["text"], "label": r["label"] + (",long" if len(r["text"]) > 40 else "")}
            for r in __import__("tests.conftest", fromlist=["x"]).sentiment_rows(64, seed=4)]
    write_csv(sentiment_data / "ml.csv", rows)
    tiny_config["data"].update(train_file=str(sentiment_data / "ml.csv"), validation_file=None,
                               validation_split=0.25, label_separator=",")
    tiny_config["task"]["multi_label"] = True
    tiny_config["train"]["num_train_epochs"] = 2
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert {"eval_f1", "eval_f1_micro", "eval_f1_long", "eval_accuracy"} <= set(metrics)
    config = json.loads((tmp_path / "run/model/config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert sorted(config["id2label"].values()) == ["long", "negative", "positive"]


def test_freezing_embeddings_and_layers(tmp_path, tiny_config):
    tiny_config["model"].update(freeze_embeddings=True, freeze_layers=1)
    tiny_config["train"].update(max_steps=3, save_strategy="no")
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["trainable_params"] < metrics["total_params"]
    from safetensors.torch import load_file

    from tests.recipes.helpers import initial_weights

    after = load_file(str(tmp_path / "run/model/model.safetensors"))
    before = initial_weights(tiny_config)
    emb = "bert.embeddings.word_embeddings.weight"
    assert (after[emb] == before[emb]).all()
    assert (after["bert.encoder.layer.0.attention.self.query.weight"]
            == before["bert.encoder.layer.0.attention.self.query.weight"]).all()
    assert not (after["bert.encoder.layer.1.attention.self.query.weight"]
                == before["bert.encoder.layer.1.attention.self.query.weight"]).all()


def test_freeze_more_layers_than_exist_is_a_user_error(tmp_path, tiny_config):
    tiny_config["model"]["freeze_layers"] = 5
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config), "--dry-run")
    assert result.exit_code == 2 and "more than the model's 2 layers" in result.output


def test_resume_auto_continues_from_the_newest_checkpoint(tmp_path, tiny_config):
    import shutil

    tiny_config["train"].update(max_steps=8, save_strategy="steps", save_steps=4, logging_steps=1,
                                eval_strategy="no", save_total_limit=None)
    full = write_yaml(tmp_path / "full.yaml", tiny_config)
    assert invoke("finetune", full).exit_code == 0
    reference = {h["step"]: h["loss"] for h in _history(tmp_path / "run") if "loss" in h}
    # Simulate a run that died after checkpoint-4: drop everything written later, then resume.
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints/checkpoint-8")
    shutil.rmtree(run / "model")
    result = invoke("finetune", full, "train.resume=auto")
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output and "checkpoint-4" in result.output
    resumed = {h["step"]: h["loss"] for h in _history(run) if "loss" in h}
    assert sorted(resumed) == list(range(1, 9))
    for step in range(5, 9):
        assert abs(resumed[step] - reference[step]) < 1e-4, (step, resumed[step], reference[step])


def test_resume_from_a_corrupt_checkpoint_is_a_user_error(tmp_path, tiny_config):
    bad = tmp_path / "checkpoint-3"
    bad.mkdir()
    (bad / "trainer_state.json").write_text("{not json")
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config), f"train.resume={bad}")
    assert result.exit_code == 2 and "not a usable checkpoint" in result.output


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, tiny_config):
    """transformers 5 skips the GA division for BERT's mean loss; llmkit's Trainer restores it."""
    losses = {}
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # same masks can't be drawn
    for name, batch, ga in (("big", 8, 1), ("ga", 2, 4)):
        cfg = dict(tiny_config, output_dir=str(tmp_path / name))
        cfg["model"] = {"from_config": {**tiny_config["model"]["from_config"], "extra": no_dropout}}
        cfg["train"] = dict(tiny_config["train"], per_device_train_batch_size=batch, gradient_accumulation_steps=ga,
                            max_steps=2, logging_steps=1, save_strategy="no", eval_strategy="no",
                            train_sampling_strategy="sequential")
        assert invoke("finetune", write_yaml(tmp_path / f"{name}.yaml", cfg)).exit_code == 0
        losses[name] = [h["loss"] for h in _history(tmp_path / name) if "loss" in h]
    assert losses["ga"] == __import__("pytest").approx(losses["big"], abs=1e-5)


def test_nan_loss_stops_with_the_step(tmp_path, tiny_config):
    tiny_config["train"].update(learning_rate=1e30, max_steps=20, logging_steps=1, save_strategy="no",
                                eval_strategy="no", max_grad_norm=0.0)
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config))
    assert result.exit_code == 2, result.output
    assert "became nan at step" in result.output


def test_resume_refuses_a_changed_experiment_but_allows_longer_training(tmp_path, tiny_config):
    tiny_config["train"].update(max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="no")
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    assert invoke("finetune", cfg).exit_code == 0
    changed = invoke("finetune", cfg, "train.resume=auto", "data.max_length=16")
    assert changed.exit_code == 2
    assert "differs from the run's saved config" in changed.output and "data.max_length: 32 -> 16" in changed.output
    longer = invoke("finetune", cfg, "train.resume=auto", "train.max_steps=6")
    assert longer.exit_code == 0, longer.output
    assert "train.max_steps: 4 -> 6" in longer.output


def test_cpu_training_switches_sdpa_to_eager_attention_where_it_is_faster(tmp_path, tiny_config):
    # SDPA's fused CPU kernel is slow in its bf16 backward, and in fp32 it draws attention dropout with torch's
    # per-element generator, which llmkit's fast dropout replaces in eager attention (docs/BENCHMARKS.md). An
    # explicit model.attn_implementation, and fp32 with train.cpu_dropout=torch, are left alone.
    tiny_config["train"].update(max_steps=2, eval_strategy="no", save_strategy="no")
    cases = {"bf16": ("bf16", None, "fast", "eager", "bf16 training"),
             "bf16-set": ("bf16", "sdpa", "fast", "sdpa", None),
             "fp32": ("fp32", None, "fast", "eager", "attention dropout"),
             "fp32-torch-dropout": ("fp32", None, "torch", "sdpa", None)}
    for name, (precision, requested, dropout, expected, reason) in cases.items():
        cfg = {**tiny_config, "output_dir": str(tmp_path / name),
               "model": {**tiny_config["model"], "attn_implementation": requested},
               "train": {**tiny_config["train"], "precision": precision, "cpu_dropout": dropout}}
        result = invoke("finetune", write_yaml(tmp_path / f"{name}.yaml", cfg))
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / name / "env.json").read_text())["attn_implementation"] == expected, name
        assert ("attention: eager" in result.output) == (reason is not None), result.output
        assert reason is None or f"attention: eager for {reason}" in result.output, result.output
        assert "eager" not in (tmp_path / name / "model" / "config.json").read_text()  # not saved with the model


def test_label_smoothing_reaches_the_classification_loss(tmp_path, tiny_config):
    """train.label_smoothing_factor is transformers' and finetune's classification loss honours it (the custom
    losses of distill, contrastive and preference training refuse it: their tests)."""
    tiny_config["train"].update(max_steps=2, eval_strategy="no", save_strategy="no")
    losses = {}
    for factor in (0.0, 0.5):
        cfg = {**tiny_config, "output_dir": str(tmp_path / str(factor)),
               "train": {**tiny_config["train"], "label_smoothing_factor": factor}}
        result = invoke("finetune", write_yaml(tmp_path / f"{factor}.yaml", cfg))
        assert result.exit_code == 0, result.output
        losses[factor] = json.loads((tmp_path / str(factor) / "metrics.json").read_text())["train_loss"]
    assert abs(losses[0.5] - losses[0.0]) > 1e-4 * abs(losses[0.0]), losses


def test_same_config_and_seed_give_the_same_metrics_and_weights(tmp_path, tiny_config):
    from safetensors.torch import load_file

    tiny_config["train"].update(num_train_epochs=2, save_strategy="no")
    runs = []
    for name in ("a", "b"):
        cfg = write_yaml(tmp_path / f"{name}.yaml", {**tiny_config, "output_dir": str(tmp_path / name)})
        result = invoke("finetune", cfg)
        assert result.exit_code == 0, result.output
        runs.append(tmp_path / name)
    timing = ("runtime", "per_second", "seconds")
    metrics = [{k: v for k, v in json.loads((r / "metrics.json").read_text()).items()
                if not any(t in k for t in timing)} for r in runs]
    assert metrics[0] == metrics[1]
    weights = [load_file(r / "model" / "model.safetensors") for r in runs]
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    env = json.loads((runs[0] / "env.json").read_text())
    # what reproducing the run needs besides config.yaml: versions, llmkit's commit, hardware, precision
    assert env["llmkit_git"]["commit"] and len(env["llmkit_git"]["commit"]) == 40
    assert {"versions", "device", "cpu_count", "torch_threads", "precision", "world_size"} <= set(env)


def test_cpu_dropout_key_chooses_the_masks_and_is_checked(tmp_path, tiny_config):
    tiny_config["train"].update(max_steps=3, logging_steps=1, eval_strategy="no", save_strategy="no")
    losses = {}
    for name in ("fast", "torch", "fast-again"):
        cfg = {**tiny_config, "output_dir": str(tmp_path / name),
               "train": {**tiny_config["train"], "cpu_dropout": name.split("-")[0]}}
        result = invoke("finetune", write_yaml(tmp_path / f"{name}.yaml", cfg))
        assert result.exit_code == 0, result.output
        losses[name] = [h["loss"] for h in _history(tmp_path / name) if "loss" in h]
    assert losses["fast"] == losses["fast-again"]  # seeded
    assert max(abs(a - b) for a, b in zip(losses["fast"], losses["torch"])) > 1e-4  # other masks were drawn
    bad = invoke("finetune", write_yaml(tmp_path / "bad.yaml", tiny_config), "train.cpu_dropout=quick")
    assert bad.exit_code == 2 and "train.cpu_dropout" in bad.output and "fast" in bad.output, bad.output
