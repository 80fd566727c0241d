"""llmkit compress through the real CLI: a tiny BERT sentiment classifier and a tiny Llama causal LM (2 layers,
built from configs, briefly trained here), pruned (layers, heads, neurons, magnitude) and quantized (torchao
int8), each stage saved, scored, timed against the original; the plan of --dry-run; the refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import sentiment_rows, train_on_sentiment, write_yaml
from tests.recipes.helpers import invoke, save_model_dir, tiny_bert_config


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tokenizer_dir) -> str:
    """A 3-layer BERT sentiment classifier (2 heads, 64 neurons), briefly trained, saved as a model directory."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_hidden_layers=3))
    train_on_sentiment(model, tokenizer, steps=60)
    return save_model_dir(tmp_path_factory, "classifier", model, tokenizer)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, chat_tokenizer_dir) -> str:
    """A 2-layer Llama (4 query heads in 2 key/value groups, 64 neurons), a few steps on the review texts."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    texts = [r["text"] for r in sentiment_rows(64, seed=5)]
    for step in range(20):
        batch = tokenizer(texts[(step * 8) % 64:(step * 8) % 64 + 8], return_tensors="pt", padding=True)
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_model_dir(tmp_path_factory, "llama", model, tokenizer)


@pytest.fixture
def compress_config(tmp_path, classifier_dir, sentiment_data) -> dict:
    return {"model": {"name_or_path": classifier_dir},
            "data": {"train_file": str(sentiment_data / "train.csv"),
                     "validation_file": str(sentiment_data / "dev.csv"), "max_length": 32},
            "compress": {"steps": [{"prune": {"ffn_fraction": 0.5, "drop_layers": [1]}},
                                   {"quantize": {"method": "int8-dynamic"}}],
                         "timing_rounds": 2},
            "output_dir": str(tmp_path / "run")}


@pytest.fixture
def llama_config(tmp_path, llama_dir) -> dict:
    text = tmp_path / "text"
    text.mkdir()
    (text / "train.txt").write_text("\n".join(r["text"] for r in sentiment_rows(64, seed=5)) + "\n")
    (text / "dev.txt").write_text("\n".join(r["text"] for r in sentiment_rows(32, seed=6)) + "\n")
    return {"model": {"name_or_path": llama_dir},
            "data": {"train_file": str(text / "train.txt"), "validation_file": str(text / "dev.txt"),
                     "max_length": 32},
            "compress": {"steps": [{"prune": {"heads": 2, "ffn_fraction": 0.25, "importance_batches": 2}}],
                         "timing_rounds": 1},
            "output_dir": str(tmp_path / "llama-run")}


def compress(tmp_path, config: dict, *extra, code: int = 0, name: str = "compress.yaml"):
    result = invoke("compress", write_yaml(tmp_path / name, config), *extra)
    assert result.exit_code == code, result.output
    return result


def test_prune_then_quantize_saves_each_stage_and_reports_every_row(tmp_path, compress_config, classifier_dir):
    from transformers import AutoModel, AutoModelForSequenceClassification

    result = compress(tmp_path, compress_config)
    run = Path(compress_config["output_dir"])
    assert "Failed to load" not in result.output and "_pytree" not in result.output
    assert "layers: drop [1], keep [0, 2]" in result.output
    assert "feed-forward neurons: 32 of 64 removed in every layer" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    steps = [row["step"] for row in metrics["rows"]]
    assert steps == ["original", "prune", "quantize"]
    original, pruned, quantized = metrics["rows"]
    assert original["accuracy"] >= 0.9
    assert pruned["parameters"] < original["parameters"] and pruned["size_bytes"] < original["size_bytes"]
    assert quantized["size_bytes"] < pruned["size_bytes"]  # int8 Linear weights (the embeddings stay float32)
    for row in metrics["rows"]:
        assert row["latency_ms_batch1"] > 0 and row["throughput_batch32_examples_per_s"] > 0
    assert metrics["size_ratio"] == quantized["size_ratio"] > 1
    # the pruned stage is a plain smaller transformers model: the config holds the new sizes
    pruned_dir = run / "steps" / "1-prune"
    plain = AutoModel.from_pretrained(pruned_dir)
    assert plain.config.num_hidden_layers == 2 and plain.config.intermediate_size == 32
    assert plain.encoder.layer[0].intermediate.dense.out_features == 32
    # the quantized model loads with plain transformers (safetensors + torchao) and gives the measured accuracy
    reloaded = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert "Int8" in type(reloaded.classifier.weight).__name__ or "Int8" in type(
        reloaded.bert.encoder.layer[0].output.dense.weight).__name__
    assert (run / "model" / "model.safetensors").is_file() and not list((run / "model").glob("*.bin"))
    report = (run / "report.md").read_text()
    assert "## Stages" in report and "| quantize |" in report and "quality_vs_size.png" in report
    assert (run / "quality_vs_size.png").stat().st_size > 1000


def test_eval_and_load_model_read_the_quantized_run(tmp_path, compress_config, sentiment_data):
    import llmkit

    compress_config["compress"]["steps"] = [{"quantize": {"method": "int8-weight-only"}}]
    compress(tmp_path, compress_config)
    run = Path(compress_config["output_dir"])
    accuracy = json.loads((run / "metrics.json").read_text())["accuracy"]
    result = invoke("eval", run, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "Failed to load" not in result.output
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]["eval_accuracy"] == pytest.approx(
        accuracy, abs=1e-4)
    model, tokenizer = llmkit.load_model(str(run))
    assert "Int8" in type(model.bert.encoder.layer[0].output.dense.weight).__name__


def test_head_pruning_of_a_llama_keeps_groups_and_loads_in_plain_transformers(tmp_path, llama_config):
    from transformers import AutoModelForCausalLM

    result = compress(tmp_path, llama_config)
    run = Path(llama_config["output_dir"])
    assert "heads removed (per kept layer, by gradient importance): layer 0:" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    original, pruned = metrics["rows"]
    assert pruned["parameters"] < original["parameters"]
    assert pruned["throughput_batch32_tokens_per_s"] > 0 and pruned["perplexity"] > 1
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 1
    assert model.config.intermediate_size == 48
    assert model.model.layers[0].self_attn.q_proj.out_features == 2 * model.config.head_dim
    assert sum(p.numel() for p in model.parameters()) == pruned["parameters"]
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_dry_run_prints_the_plan_and_the_expected_parameters_without_writing(tmp_path, llama_config):
    result = compress(tmp_path, llama_config, "--dry-run")
    assert "nothing compressed or written" in result.output
    assert not Path(llama_config["output_dir"]).exists()
    assert "memory: ~" not in result.output  # nothing trains without a recover step
    expected = float(result.output.split("(expected ")[1].split(" M parameters")[0])
    compress(tmp_path, llama_config)
    measured = json.loads((Path(llama_config["output_dir"]) / "metrics.json").read_text())["parameters"]
    assert expected == pytest.approx(measured / 1e6, abs=1e-3)


def test_head_importance_follows_the_gradient(tmp_path, llama_dir, chat_tokenizer_dir):
    """Michel et al.: a head whose output is scaled up matters more to the loss than one silenced."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.models import compression

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    size = model.config.head_dim
    with torch.no_grad():  # head 3 of layer 0 silenced: its output columns in o_proj are zero
        model.model.layers[0].self_attn.o_proj.weight[:, 3 * size:4 * size] = 0
    batch = tokenizer(["the film was great and lovely"] * 4, return_tensors="pt")
    scores = compression.importance(model, [{**batch, "labels": batch["input_ids"]}], "heads", "k")
    assert scores.shape == (2, 4) and scores[0, 3] == 0 and scores[0, :3].min() > 0
    assert compression.least_important(scores, 2, group=2)[0] == [2, 3]


def test_magnitude_pruning_zeroes_weights_and_says_it_saves_nothing(tmp_path, compress_config):
    compress_config["compress"]["steps"] = [{"prune": {"magnitude": 0.5}}]
    result = compress(tmp_path, compress_config)
    assert "saves no time and no memory" in result.output
    run = Path(compress_config["output_dir"])
    original, pruned = json.loads((run / "metrics.json").read_text())["rows"]
    assert pruned["parameters"] == original["parameters"]
    from safetensors.torch import load_file

    weight = load_file(str(run / "model" / "model.safetensors"))["bert.encoder.layer.0.intermediate.dense.weight"]
    assert (weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("steps, expect", [
    ([{"prune": {"ffn_fraction": 1.5}}], "compress.steps[0].prune.ffn_fraction: must be a fraction strictly "
                                         "between 0 and 1, got 1.5"),
    ([{"prune": {"magnitude": 0}}], "compress.steps[0].prune.magnitude: must be a fraction strictly between 0"),
    ([{"quantize": {}}, {"quantize": {"method": "int8-weight-only"}}], "quantize is listed 2 times"),
    ([{"quantize": {}}, {"prune": {"ffn_fraction": 0.5}}], "quantize must be the last step"),
    ([{"quantize": {"method": "int4-weight-only"}}], "need a CUDA GPU"),
    ([{"quantize": {"int8_embeddings": True}}], "int8_embeddings: only applies to method torch-int8-dynamic"),
    ([{"prune": {"drop_layers": [0, 1, 2]}}], "that drops all 3 layers"),
    ([{"prune": {"drop_layers": [5]}}], "compress.steps[0].prune.drop_layers: [5] out of range"),
    ([{"prune": {"heads": 2}}], "would prune every head of each layer (the model has 2 per layer)"),
    ([{"prune": {}}], "nothing to prune"),
    ([{"prune": {"ffn_fraction": 0.5}, "quantize": {}}], "exactly one of prune"),
])
def test_bad_steps_exit_2_before_any_work(tmp_path, compress_config, steps, expect):
    compress_config["compress"]["steps"] = steps
    for extra in ((), ("--dry-run",)):
        result = compress(tmp_path, compress_config, *extra, code=2)
        assert expect in result.output and "Traceback" not in result.output
        assert not Path(compress_config["output_dir"]).exists()


def test_llama_heads_refused_when_every_head_or_half_a_group_would_go(tmp_path, llama_config):
    llama_config["compress"]["steps"] = [{"prune": {"heads": 4}}]
    assert "would prune every head of each layer" in compress(tmp_path, llama_config, code=2).output
    llama_config["compress"]["steps"] = [{"prune": {"heads": 1}}]
    assert "not a multiple of 2" in compress(tmp_path, llama_config, code=2).output


def test_an_already_quantized_model_is_refused(tmp_path, compress_config):
    compress_config["compress"]["steps"] = [{"quantize": {}}]
    compress(tmp_path, compress_config)
    again = {**compress_config, "model": {"name_or_path": compress_config["output_dir"]},
             "output_dir": str(tmp_path / "again")}
    result = compress(tmp_path, again, code=2, name="again.yaml")
    assert "is already quantized (torchao)" in result.output and not (tmp_path / "again").exists()


def test_missing_torchao_names_the_extra(tmp_path, compress_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    result = compress(tmp_path, compress_config, code=2)
    assert "pip install 'llmkit[compress]'" in result.output


def test_train_keys_are_refused(tmp_path, compress_config):
    compress_config["train"] = {"learning_rate": 1e-4, "seed": 3}
    result = compress(tmp_path, compress_config, code=2)
    assert "train.learning_rate: only a recover step trains" in result.output


TRAIN = {"num_train_epochs": 2, "learning_rate": 2e-3, "per_device_train_batch_size": 8, "logging_steps": 2,
         "save_strategy": "no", "precision": "fp32", "disable_tqdm": True, "seed": 0}


def test_recover_by_distillation_trains_the_pruned_model_against_the_original(tmp_path, compress_config):
    compress_config["compress"]["steps"] = [{"prune": {"ffn_fraction": 0.75, "drop_layers": [1]}},
                                            {"recover": {"method": "distill", "alpha": 0.5, "temperature": 2.0}}]
    compress_config["train"] = dict(TRAIN)
    result = compress(tmp_path, compress_config)
    assert "distill from the original: 0.5 x CE + 0.5 x tau^2 x KL, tau=2; 16 optimizer steps over 64" in result.output
    # the estimate before training: the pruned copy trains; the original and the pruned stage stay beside it
    memory = re.search(r"memory: ~.* = weights ([\d.]+ [KMG]iB) .* frozen models ([\d.]+ [KMG]iB)", result.output)
    assert memory, result.output
    run = Path(compress_config["output_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["step"] for r in metrics["rows"]] == ["original", "prune", "recover"]
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    steps = [h for h in history if "loss" in h]
    assert steps and {"loss_ce", "loss_kd"} <= set(steps[0])  # llmkit distill's trainer and its logged terms
    from safetensors.torch import load_file

    before = load_file(str(run / "steps" / "1-prune" / "model.safetensors"))
    after = load_file(str(run / "model" / "model.safetensors"))
    assert set(before) == set(after)
    assert not torch.equal(before["bert.encoder.layer.0.intermediate.dense.weight"],
                           after["bert.encoder.layer.0.intermediate.dense.weight"])
    assert metrics["rows"][2]["parameters"] == metrics["rows"][1]["parameters"]
    assert "recover (distill): 16 steps" in (run / "report.md").read_text()


def test_recover_by_finetuning_then_quantize(tmp_path, compress_config):
    compress_config["compress"]["steps"] = [{"prune": {"ffn_fraction": 0.5}}, {"recover": {"method": "finetune"}},
                                            {"quantize": {"method": "int8-weight-only"}}]
    compress_config["train"] = {**TRAIN, "num_train_epochs": 1}
    result = compress(tmp_path, compress_config)
    assert "finetune: the task loss; 8 optimizer steps" in result.output
    run = Path(compress_config["output_dir"])
    rows = json.loads((run / "metrics.json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["original", "prune", "recover", "quantize"]
    assert (run / "steps" / "2-recover" / "model" / "model.safetensors").is_file()
    log = run / "steps" / "2-recover" / "log_history.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines()]
    assert all("loss_kd" not in h for h in history)
    assert rows[3]["size_bytes"] < rows[2]["size_bytes"]


@pytest.mark.parametrize("change, expect", [
    ({"compress.steps": [{"recover": {}}], "data.train_file": None}, "data.train_file: a recover step trains on it"),
    ({"compress.steps": [{"prune": {"magnitude": 0.5}}, {"recover": {}}]}, "would train the zeroed weights back"),
    ({"compress.steps": [{"recover": {"method": "finetune", "alpha": 0.2}}]}, "only apply to method: distill"),
    ({"compress.steps": [{"recover": {"temperature": 0}}]}, "temperature: must be > 0"),
])
def test_bad_recover_settings_exit_2(tmp_path, compress_config, change, expect):
    for key, value in change.items():
        section, name = key.split(".")
        compress_config[section][name] = value
    result = compress(tmp_path, compress_config, code=2)
    assert expect in result.output


def test_smoke_mode_runs_every_step_on_a_tiny_copy(tmp_path, compress_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compress_config["compress"]["steps"].insert(1, {"recover": {}})
    compress_config["train"] = dict(TRAIN)
    result = compress(tmp_path, compress_config, "--smoke")
    assert "replaced by a tiny BertForSequenceClassification" in result.output and "3 training steps" in result.output
    rows = json.loads((tmp_path / "smoke" / "compress-compress" / "metrics.json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["original", "prune", "recover", "quantize"]


def test_low_rank_factorises_matched_layers_and_llmkit_loads_them(tmp_path, compress_config, sentiment_data):
    import llmkit

    compress_config["compress"]["steps"] = [{"low_rank": {"pattern": r"intermediate\.dense|output\.dense$",
                                                          "rank": 4}}]
    result = compress(tmp_path, compress_config)
    assert "truncated SVD (rank 4): bert.encoder.layer.0.attention.output.dense: 4;" in result.output
    run = Path(compress_config["output_dir"])
    rows = json.loads((run / "metrics.json").read_text())["rows"]
    # 3 layers x (attention output 32x32, intermediate 64x32, output 32x64): 4 x (in + out) instead of in x out
    assert rows[0]["parameters"] - rows[1]["parameters"] == 3 * ((1024 - 256) + (2048 - 384) + (2048 - 384))
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["llmkit_low_rank"]["bert.encoder.layer.2.intermediate.dense"] == 4
    model, _ = llmkit.load_model(str(run))
    assert type(model.bert.encoder.layer[0].intermediate.dense).__name__ == "Sequential"
    assert sum(p.numel() for p in model.parameters()) == rows[1]["parameters"]
    result = invoke("eval", run, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    accuracy = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]["eval_accuracy"]
    assert accuracy == pytest.approx(rows[1]["accuracy"], abs=1e-4)


def test_low_rank_by_energy_then_recover(tmp_path, compress_config):
    compress_config["compress"]["steps"] = [{"prune": {"ffn_fraction": 0.5}},
                                            {"low_rank": {"pattern": r"intermediate\.dense", "energy": 0.9}},
                                            {"recover": {"method": "distill"}}]
    compress_config["train"] = {**TRAIN, "num_train_epochs": 1}
    result = compress(tmp_path, compress_config, "--dry-run")
    assert "truncated SVD (energy 0.9)" in result.output and "nothing compressed or written" in result.output
    compress(tmp_path, compress_config)
    run = Path(compress_config["output_dir"])
    assert [r["step"] for r in json.loads((run / "metrics.json").read_text())["rows"]] == [
        "original", "prune", "low_rank", "recover"]
    from llmkit.models import low_rank

    ranks = low_rank.saved_ranks(run / "model")
    assert ranks and all(1 <= r < 32 for r in ranks.values())  # the pruned layers are 32 x 32


def test_choose_ranks_keeps_the_energy_share():
    from llmkit.models import low_rank

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 16)
    with torch.no_grad():  # singular values 8, 4, 2, 1, 0, ...: squared shares 64, 16, 4, 1 of 85
        u, _, vh = torch.linalg.svd(torch.randn(16, 16))
        linear.weight.copy_(u[:, :4] @ torch.diag(torch.tensor([8.0, 4.0, 2.0, 1.0])) @ vh[:4])
    assert low_rank.choose_ranks([("x", linear)], None, 0.75, "k") == {"x": 1}
    assert low_rank.choose_ranks([("x", linear)], None, 0.9, "k") == {"x": 2}
    assert low_rank.choose_ranks([("x", linear)], None, 0.99, "k") == {"x": 4}
    model = torch.nn.Sequential(linear)
    model.config = type("C", (), {"update": lambda self, d: self.__dict__.update(d)})()
    x = torch.randn(3, 16)
    before = model(x)
    low_rank.factorize(model, {"0": 4})
    assert torch.allclose(model(x), before, atol=1e-4)  # rank 4 holds all of a rank-4 matrix


@pytest.mark.parametrize("steps, expect", [
    ([{"low_rank": {"pattern": "no_such_layer", "rank": 2}}], "matches no Linear layer of this model"),
    ([{"low_rank": {"pattern": "intermediate", "rank": 40}}], "is larger than layer bert.encoder.layer.0"),
    ([{"low_rank": {"pattern": "intermediate", "rank": 30}}], "larger, not smaller; ranks below 22 save"),
    ([{"low_rank": {"pattern": "intermediate", "rank": 2}}, {"quantize": {}}], "quantize after low_rank"),
    ([{"low_rank": {"pattern": "intermediate", "energy": 1.0}}], "energy: must be a fraction strictly between 0"),
    ([{"low_rank": {"pattern": "intermediate"}}], "give exactly one of rank or energy"),
    ([{"low_rank": {"pattern": "(", "rank": 2}}], "is not a valid regular expression"),
    ([{"recover": {}}, {"prune": {"ffn_fraction": 0.5}}], "list them as prune, recover"),
])
def test_bad_low_rank_and_order_exit_2(tmp_path, compress_config, steps, expect):
    compress_config["compress"]["steps"] = steps
    for extra in ((), ("--dry-run",)):
        result = compress(tmp_path, compress_config, *extra, code=2)
        assert expect in result.output and "Traceback" not in result.output


def test_recover_of_a_causal_lm_trains_on_windows_of_the_training_text(tmp_path, llama_config):
    llama_config["compress"]["steps"] = [{"prune": {"ffn_fraction": 0.5, "importance_batches": 1}},
                                         {"recover": {"method": "distill"}}]
    # bf16 training: the recovered stage is scored and timed as saved (fp32), not through accelerate's autocast
    llama_config["train"] = {**TRAIN, "num_train_epochs": 1, "per_device_train_batch_size": 2, "precision": "bf16"}
    result = compress(tmp_path, llama_config)
    run = Path(llama_config["output_dir"])
    rows = json.loads((run / "metrics.json").read_text())["rows"]
    assert [r["step"] for r in rows] == ["original", "prune", "recover"]
    steps = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    assert any("loss_kd" in h for h in steps)
    assert "optimizer steps over" in result.output and rows[2]["perplexity"] > 1
    import llmkit
    from llmkit.metrics.perplexity import causal_lm_perplexity

    model, tokenizer = llmkit.load_model(str(run))
    ids = tokenizer(Path(llama_config["data"]["validation_file"]).read_text(), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        again = causal_lm_perplexity(model, ids, 32, 16, 32).perplexity
    assert again == pytest.approx(rows[2]["perplexity"], rel=1e-5)


def test_no_torchao_chatter_reaches_the_terminal(tmp_path, compress_config):
    """A real `llmkit` process: torchao's CPU-machine messages (CUDA kernels that cannot load, torch _pytree
    deprecations, no triton) are filtered out."""
    import subprocess
    import sys

    compress_config["compress"]["steps"] = [{"quantize": {}}]
    compress_config["compress"]["timing_rounds"] = 1
    path = write_yaml(tmp_path / "compress.yaml", compress_config)
    proc = subprocess.run([sys.executable, "-m", "llmkit", "compress", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    for text in ("Failed to load", "_pytree", "triton", "Writing model shards"):
        assert text not in proc.stderr + proc.stdout, proc.stderr
    assert "| quantize |" in proc.stdout


def test_torch_dynamic_int8_is_saved_as_safetensors_and_read_back_by_llmkit(tmp_path, compress_config,
                                                                            sentiment_data):
    import llmkit

    compress_config["compress"]["steps"] = [{"quantize": {"method": "torch-int8-dynamic", "int8_embeddings": True}}]
    compress(tmp_path, compress_config)
    run = Path(compress_config["output_dir"])
    original, quantized = json.loads((run / "metrics.json").read_text())["rows"]
    assert quantized["parameters"] == original["parameters"] and quantized["size_bytes"] < original["size_bytes"]
    assert [p.name for p in (run / "model").glob("*.safetensors")] == ["model.safetensors"]
    assert not list((run / "model").glob("*.bin"))
    from safetensors.torch import load_file

    saved = load_file(str(run / "model" / "model.safetensors"))
    assert saved["bert.embeddings.word_embeddings.weight_int8"].dtype == torch.int8
    assert saved["bert.encoder.layer.0.intermediate.dense.weight_int8"].dtype == torch.int8
    result = invoke("eval", run, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    accuracy = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]["eval_accuracy"]
    assert accuracy == pytest.approx(quantized["accuracy"], abs=1e-4)
    model, _ = llmkit.load_model(str(run))
    assert "DynamicQuantizedLinear" in repr(model.bert.encoder.layer[0].intermediate.dense) or \
        "Dynamic" in type(model.bert.encoder.layer[0].intermediate.dense).__name__
    again = {**compress_config, "model": {"name_or_path": str(run)}, "output_dir": str(tmp_path / "again")}
    assert "already quantized (PyTorch dynamic int8)" in compress(tmp_path, again, code=2, name="again.yaml").output


def test_a_low_rank_model_is_not_pruned_factorised_or_quantized_again(tmp_path, compress_config):
    compress_config["compress"]["steps"] = [{"low_rank": {"pattern": r"intermediate\.dense", "rank": 4}}]
    compress(tmp_path, compress_config)
    for steps in ([{"prune": {"ffn_fraction": 0.5}}], [{"quantize": {"method": "torch-int8-dynamic"}}]):
        again = {**compress_config, "model": {"name_or_path": compress_config["output_dir"]},
                 "compress": {"steps": steps}, "output_dir": str(tmp_path / "again")}
        result = compress(tmp_path, again, code=2, name="again.yaml")
        assert "already holds low-rank (factorised) layers" in result.output


def test_torch_dynamic_int8_of_a_llama_reloads_with_the_measured_perplexity(tmp_path, llama_config):
    import llmkit

    llama_config["compress"]["steps"] = [{"quantize": {"method": "torch-int8-dynamic", "int8_embeddings": True}}]
    compress(tmp_path, llama_config)
    run = Path(llama_config["output_dir"])
    measured = json.loads((run / "metrics.json").read_text())["perplexity"]
    model, tokenizer = llmkit.load_model(str(run))
    from llmkit.metrics.perplexity import causal_lm_perplexity

    ids = tokenizer((Path(llama_config["data"]["validation_file"])).read_text(), add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        again = causal_lm_perplexity(model, ids, 32, 16, 32).perplexity
    assert again == pytest.approx(measured, rel=1e-3)


def test_torch_dynamic_int8_keeps_embeddings_float_unless_asked(tmp_path, classifier_dir):
    from transformers import AutoModelForSequenceClassification

    from llmkit.models import dynamic_int8, low_rank

    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    before = model.bert.embeddings.word_embeddings.weight.clone()
    dynamic_int8.quantize(model)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, before)
    dynamic_int8.save(model, tmp_path / "q")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert saved["bert.embeddings.word_embeddings.weight"].dtype == torch.float32
    reloaded = low_rank.from_pretrained(AutoModelForSequenceClassification, str(tmp_path / "q"))
    ids = torch.tensor([[2, 10, 20, 3]])
    assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_torch_dynamic_int8_weights_have_one_scale_per_output_channel_and_old_files_still_load(tmp_path,
                                                                                               classifier_dir):
    import warnings

    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from llmkit.models import dynamic_int8, low_rank

    ids = torch.tensor([[2, 10, 20, 3]])
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    dense = model.bert.encoder.layer[0].intermediate.dense
    exact = model(input_ids=ids).logits
    dynamic_int8.quantize(model)
    dynamic_int8.save(model, tmp_path / "channel")
    saved = load_file(str(tmp_path / "channel" / "model.safetensors"))
    scale = saved["bert.encoder.layer.0.intermediate.dense.weight_scale"]
    assert scale.shape == (dense.out_features,) and scale.unique().numel() > 1
    reloaded = low_rank.from_pretrained(AutoModelForSequenceClassification, str(tmp_path / "channel"))
    assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert torch.allclose(model(input_ids=ids).logits, exact, atol=5e-2)

    # a file written with one scale per weight (before per-channel weights) loads with its own scales
    old = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    names = [n for n, m in old.named_modules() if type(m) is torch.nn.Linear]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(old, set(names), dtype=torch.qint8, inplace=True)
    old.config.update({dynamic_int8.CONFIG_KEY: names, dynamic_int8.EMBEDDINGS_KEY: []})
    dynamic_int8.save(old, tmp_path / "tensor")
    assert load_file(str(tmp_path / "tensor" / "model.safetensors"))[
        "bert.encoder.layer.0.intermediate.dense.weight_scale"].shape == (1,)
    reloaded = low_rank.from_pretrained(AutoModelForSequenceClassification, str(tmp_path / "tensor"))
    assert torch.equal(reloaded(input_ids=ids).logits, old(input_ids=ids).logits)


def test_head_pruning_of_a_bert_is_recorded_in_its_config_and_loaded_by_llmkit(tmp_path, compress_config,
                                                                              sentiment_data):
    """BERT's config derives the head size from its head count, so the kept heads go in config.json as
    llmkit_attention_heads; llmkit's loader builds the smaller projections (also under int8 quantization)."""
    from transformers import AutoModelForSequenceClassification

    import llmkit

    compress_config["compress"]["steps"] = [{"prune": {"heads": 1, "ffn_fraction": 0.25, "importance_batches": 2}},
                                            {"quantize": {"method": "torch-int8-dynamic"}}]
    planned = compress(tmp_path, compress_config, "--dry-run").output
    assert "recorded as llmkit_attention_heads in config.json" in planned
    expected = float(planned.split("(expected ")[1].split(" M parameters")[0])
    compress(tmp_path, compress_config)
    run = Path(compress_config["output_dir"])
    original, pruned, quantized = json.loads((run / "metrics.json").read_text())["rows"]
    assert pruned["parameters"] == pytest.approx(expected * 1e6, abs=1e3) and pruned["parameters"] < original[
        "parameters"]
    pruned_dir = run / "steps" / "1-prune"
    config = json.loads((pruned_dir / "config.json").read_text())
    assert (config["llmkit_attention_heads"], config["num_attention_heads"]) == (1, 2)
    model, _ = llmkit.load_model(str(pruned_dir))
    attention = model.bert.encoder.layer[0].attention
    assert (attention.self.query.out_features, attention.output.dense.in_features) == (16, 16)
    assert sum(p.numel() for p in model.parameters()) == pruned["parameters"]
    for directory, row in ((pruned_dir, pruned), (run, quantized)):  # eval reproduces each stage's accuracy
        out = tmp_path / f"eval-{row['step']}"
        result = invoke("eval", directory, "--data", sentiment_data / "dev.csv", "-o", out)
        assert result.exit_code == 0, result.output
        assert json.loads((out / "eval.json").read_text())["metrics"]["eval_accuracy"] == pytest.approx(
            row["accuracy"], abs=1e-4)
    with pytest.raises(Exception, match="size mismatch|mismatch"):  # plain transformers cannot (documented)
        AutoModelForSequenceClassification.from_pretrained(pruned_dir)


def test_float8_dynamic_is_refused_on_cpu(tmp_path, compress_config):
    """quantize method float8-dynamic needs a CUDA GPU (docs/commands/compress.md): refused with exit 2 before any
    work, with and without --dry-run, naming the CPU methods to use instead."""
    compress_config["compress"]["steps"] = [{"quantize": {"method": "float8-dynamic"}}]
    for extra in ((), ("--dry-run",)):
        result = compress(tmp_path, compress_config, *extra, code=2)
        output = " ".join(result.output.split())
        assert "compress.steps[0].quantize.method: float8-dynamic" in output, output
        assert "need a CUDA GPU" in output and "int8-dynamic or int8-weight-only or torch-int8-dynamic" in output
        assert "Traceback" not in output and not Path(compress_config["output_dir"]).exists()


@pytest.mark.parametrize("prune", [{"heads": 1}, {"ffn_fraction": 0.5}])
def test_structured_pruning_of_gpt2_is_refused(tmp_path, tmp_path_factory, chat_tokenizer_dir, prune):
    """GPT-2 (Conv1D) is not pruned: heads / neurons of a GPT-2 model are refused with exit 2, naming the key, the
    architectures llmkit prunes and the steps that do work, and nothing is written."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                       pad_token_id=tokenizer.pad_token_id))
    gpt2 = save_model_dir(tmp_path_factory, "gpt2", model, tokenizer)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(r["text"] for r in sentiment_rows(16, seed=5)) + "\n")
    config = {"model": {"name_or_path": gpt2},
              "data": {"train_file": str(text), "validation_file": str(text), "max_length": 32},
              "compress": {"steps": [{"prune": {**prune, "importance_batches": 1}}], "timing_rounds": 1},
              "output_dir": str(tmp_path / "run")}
    for extra in ((), ("--dry-run",)):
        result = compress(tmp_path, config, *extra, code=2)
        output = " ".join(result.output.split())
        assert "compress.steps[0].prune: structured pruning knows BERT-family encoders and Llama-family decoders; " \
               "GPT2LMHeadModel has another layout" in output, output
        assert "low_rank / quantize or prune.magnitude" in output and "Traceback" not in output
        assert not (tmp_path / "run").exists()


def test_rows_longer_than_the_models_positions_are_refused_before_the_run_directory(tmp_path, compress_config):
    from tests.conftest import write_csv

    rows = sentiment_rows(32, seed=2) + [{"text": " ".join(["great"] * 100), "label": "positive"}]
    compress_config["data"].update(validation_file=str(write_csv(tmp_path / "long" / "dev.csv", rows)),
                                   max_length=100000)
    needles = ("data.max_length", "only 64 positions", "set data.max_length=64")
    for extra in (("--dry-run",), ()):
        result = compress(tmp_path, compress_config, *extra, code=2)
        assert "Traceback" not in result.output and all(n in result.output for n in needles), result.output
    assert not Path(compress_config["output_dir"]).exists()
