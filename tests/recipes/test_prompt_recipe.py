"""llmkit prompt through the real CLI on tiny causal (Llama) and masked (BERT) LMs saved to disk (built from
configs, nothing downloaded): zero-shot without a training step, few-shot per seed with mean ± std and the
head baseline, adapters and soft prompts, in-context demonstrations, calibration, chat templates, and the
bad-input cases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import write_yaml
from tests.recipes.helpers import invoke, save_model_dir


@pytest.fixture(scope="module")
def llama_lm(tmp_path_factory, chat_tokenizer_dir) -> str:
    """A 2-layer Llama causal LM with the byte-level BPE chat tokenizer, saved like a downloaded checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id))
    return save_model_dir(tmp_path_factory, "llama-lm", model, tokenizer)


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory, tokenizer_dir) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64))
    return save_model_dir(tmp_path_factory, "bert-mlm", model, tokenizer)


@pytest.fixture
def config(tmp_path, sentiment_data, llama_lm) -> dict:
    return {
        "model": {"name_or_path": llama_lm},
        "data": {"train_file": str(sentiment_data / "train.csv"), "validation_file": str(sentiment_data / "dev.csv"),
                 "label_names": ["negative", "positive"], "max_length": 32},
        "prompt": {"template": "{text} It was {mask}.", "verbalizer": {"negative": ["terrible"],
                                                                        "positive": ["great"]}},
        "train": {"num_train_epochs": 6, "learning_rate": 3e-3, "per_device_train_batch_size": 4,
                  "per_device_eval_batch_size": 16, "logging_steps": 4, "eval_strategy": "no",
                  "save_strategy": "no", "precision": "fp32", "disable_tqdm": True, "seed": 0},
        "output_dir": str(tmp_path / "run"),
    }


def run_prompt(tmp_path, cfg: dict, *extra):
    result = invoke("prompt", write_yaml(tmp_path / "prompt.yaml", cfg), *extra)
    assert result.exit_code == 0, result.output
    out = Path(cfg["output_dir"])
    return result, json.loads((out / "metrics.json").read_text()), out


def fails(tmp_path, cfg: dict, *extra) -> str:
    result = invoke("prompt", write_yaml(tmp_path / "prompt.yaml", cfg), *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def with_prompt(cfg: dict, **prompt) -> dict:
    return {**cfg, "prompt": {**cfg["prompt"], **prompt}}


def accuracy_of(predictions: Path) -> float:
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["example"] for r in rows] == list(range(len(rows)))  # data order, though scored longest first
    return sum(r["label"] == r["prediction"] for r in rows) / len(rows)


def test_zero_shot_scores_the_validation_data_without_a_training_step(tmp_path, config, monkeypatch):
    import transformers

    def no_training(*args, **kwargs):
        raise AssertionError("zero-shot must not train")

    monkeypatch.setattr(transformers.Trainer, "train", no_training)
    result, metrics, out = run_prompt(tmp_path, with_prompt(config, calibrate=True))
    assert "example validation[0]: " in result.output and "It was" in result.output
    assert metrics["mode"] == "zero-shot" and "train_runtime" not in metrics
    assert metrics["eval_accuracy"] == pytest.approx(accuracy_of(out / "predictions_validation.jsonl"))
    assert 0.0 <= metrics["eval_calibrated_accuracy"] <= 1.0
    assert sum(metrics["calibration_probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert not (out / "model").exists() and not (out / "checkpoints").exists()
    assert {"config.yaml", "env.json", "report.md"} <= {p.name for p in out.iterdir()}


def test_few_shot_trains_per_seed_and_reports_mean_and_std_beside_the_head_baseline(tmp_path, config):
    zero_run, zero, _ = run_prompt(tmp_path, {**config, "output_dir": str(tmp_path / "zero")})
    zero_output = zero_run.output
    cfg = with_prompt(config, mode="few-shot", shots_per_class=8, seeds=[1, 2], head_baseline=True, calibrate=True)
    result, metrics, out = run_prompt(tmp_path, cfg)
    assert metrics["seeds"] == [1, 2] and set(metrics["per_seed"]) == {"1", "2"}
    for key in ("eval_accuracy", "eval_calibrated_accuracy", "head_eval_accuracy"):
        values = [metrics["per_seed"][s][key] for s in ("1", "2")]
        assert metrics[key] == pytest.approx(sum(values) / 2)
        assert metrics[f"{key}_std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert "mean ± std" in result.output
    memory = re.search(r"memory: ~.* activations .* \((\d+) x (\d+) tokens\)", result.output)
    assert memory and "memory: ~" not in zero_output, result.output  # scoring only: no training estimate
    for seed in ("1", "2"):
        sampled = json.loads((out / f"seed-{seed}" / "sampled.json").read_text())["train_examples"]
        assert len(sampled) == 16
        assert (out / f"seed-{seed}" / "model" / "model.safetensors").is_file()
        assert (out / f"seed-{seed}" / "head" / "model" / "model.safetensors").is_file()
        assert metrics["per_seed"][seed]["train_examples"] == 16
    # the verbalizer is learnt from 16 examples: better than the untrained model's zero-shot figure
    assert metrics["eval_accuracy"] > zero["eval_accuracy"] + 0.1


def test_few_shot_sampling_is_reproducible_and_balanced(tmp_path, config, sentiment_data):
    import csv

    labels = [row["label"] for row in csv.DictReader((sentiment_data / "train.csv").open())]
    cfg = with_prompt(config, mode="few-shot", shots_per_class=4, seeds=[7])
    runs = []
    for name in ("a", "b"):
        _, metrics, out = run_prompt(tmp_path, {**cfg, "output_dir": str(tmp_path / name),
                                                "train": {**cfg["train"], "num_train_epochs": 1}})
        runs.append((json.loads((out / "seed-7" / "sampled.json").read_text())["train_examples"], metrics))
    assert runs[0][0] == runs[1][0]
    assert sorted(labels[i] for i in runs[0][0]) == ["negative"] * 4 + ["positive"] * 4
    assert runs[0][1]["eval_accuracy"] == runs[1][1]["eval_accuracy"]


def test_few_shot_with_lora_trains_only_the_adapter(tmp_path, config, llama_lm):
    from safetensors.torch import load_file

    cfg = {**with_prompt(config, mode="few-shot", shots_per_class=4, seeds=[1]),
           "adapter": {"method": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    before = load_file(str(Path(llama_lm) / "model.safetensors"))
    _, metrics, out = run_prompt(tmp_path, cfg)
    adapter_dir = out / "seed-1" / "adapter"
    meta = json.loads((adapter_dir / "llmkit_adapter.json").read_text())
    assert meta["method"] == "lora" and meta["task"] == "causal-lm"
    assert not (out / "seed-1" / "model").exists()
    assert metrics["per_seed"]["1"]["trainable_params"] < metrics["per_seed"]["1"]["total_params"] / 10
    after = load_file(str(Path(llama_lm) / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_soft_prompt_tuning_starts_from_the_template_words(tmp_path, config, llama_lm):
    from llmkit.config import load_config
    from llmkit.recipes.prompt import PromptConfig, attach, prepare

    cfg = with_prompt(config, mode="soft-prompt", shots_per_class=4, seeds=[1])
    setup, model = prepare(load_config(PromptConfig, None, data=cfg))
    words = model.get_input_embeddings().weight.detach().clone()
    prompted = attach(setup, model, set())
    text_ids = setup.tokenizer("It was .")["input_ids"]
    expected = words[[text_ids[i % len(text_ids)] for i in range(20)]]  # PEFT repeats the text to 20 tokens
    assert torch.equal(prompted.prompt_encoder["default"].embedding.weight.detach(), expected)

    _, metrics, out = run_prompt(tmp_path, cfg)
    peft_config = json.loads(next((out / "seed-1" / "adapter").rglob("adapter_config.json")).read_text())
    assert peft_config["peft_type"] == "PROMPT_TUNING" and peft_config["num_virtual_tokens"] == 20
    assert peft_config["prompt_tuning_init_text"] == "It was ."
    assert metrics["per_seed"]["1"]["trainable_params"] == 20 * 32  # virtual tokens x hidden size


@pytest.mark.parametrize("method", ["p_tuning", "prefix_tuning"])
def test_other_soft_prompts_on_a_masked_lm(tmp_path, config, bert_mlm, method):
    cfg = {**with_prompt(config, mode="soft-prompt", shots_per_class=4, seeds=[1], template="{text} It was {mask} ."),
           "model": {"name_or_path": bert_mlm}, "adapter": {"method": method, "num_virtual_tokens": 4}}
    _, metrics, out = run_prompt(tmp_path, cfg)
    assert json.loads((out / "seed-1" / "adapter" / "llmkit_adapter.json").read_text())["task"] == "masked-lm"
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


def test_in_context_demonstrations_per_seed(tmp_path, config):
    cfg = with_prompt(config, mode="in-context", demonstrations_per_class=2, seeds=[1, 2],
                      demonstration_separator=" | ")
    result, metrics, out = run_prompt(tmp_path, cfg)
    shown = next(line for line in result.output.splitlines() if line.startswith("  | "))
    assert shown.count(" | ") >= 5  # the example prompt (behind its margin) shows 4 demonstrations
    demos = [json.loads((out / f"seed-{s}" / "sampled.json").read_text())["demonstrations"] for s in (1, 2)]
    assert all(len(d) == 4 for d in demos) and demos[0] != demos[1]
    assert "eval_accuracy_std" in metrics and not (out / "seed-1" / "model").exists()


def test_chat_template_puts_the_prompt_in_a_user_turn(tmp_path, config):
    cfg = with_prompt(config, chat_template=True, multi_token="sum")
    result, metrics, _ = run_prompt(tmp_path, cfg)
    assert "<|im_start|>user" in result.output and "<|im_start|>assistant" in result.output
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0


def test_masked_lm_zero_shot_and_text_pairs(tmp_path, config, bert_mlm, sentiment_data):
    from tests.conftest import sentiment_rows, write_csv

    rows = [{"premise": r["text"], "hypothesis": "it was good", "label": r["label"]} for r in sentiment_rows(16, 4)]
    write_csv(tmp_path / "pairs.csv", rows)
    cfg = {**with_prompt(config, template="{text_a} ? {mask} , {text_b}"), "model": {"name_or_path": bert_mlm},
           "data": {**config["data"], "train_file": None, "validation_file": str(tmp_path / "pairs.csv"),
                    "text_column": "premise", "text_pair_column": "hypothesis"}}
    result, metrics, _ = run_prompt(tmp_path, cfg)
    assert "[MASK]" in result.output and metrics["eval_examples_per_second"] > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("prompt, message", [
    ({"template": "{text} It was great."}, "needs exactly one {mask}"),
    ({"template": "It was {mask}."}, "no {text}"),
    ({"verbalizer": {"negative": ["terrible"]}}, "class 'positive' has no label words"),
    ({"verbalizer": {"negative": ["terrible"], "positive": []}}, "class 'positive' has no label words"),
    ({"verbalizer": {"negative": ["terrible"], "positive": ["marvellousness"]}}, "prompt.multi_token=sum"),
    ({"mode": "few-shot", "shots_per_class": 33}, "class 'negative' has 32 training example(s)"),
    ({"mode": "few-shot"}, "shots_per_class: few-shot trains on K examples per class"),
    ({"seeds": [1, 2]}, "zero-shot samples nothing"),
    ({"mode": "in-context", "demonstrations_per_class": 8, "context_length": 64},
     "does not fit prompt.context_length=64. Use a higher prompt.context_length (up to the model's context)"),
    ({"template": "{text} ({source}) It was {mask}."}, "the template field {source} reads column 'source'"),
    ({"head_baseline": True}, "only with mode few-shot or soft-prompt"),
])
def test_bad_prompt_settings_exit_2_naming_the_key_and_the_fix(tmp_path, config, prompt, message):
    out = fails(tmp_path, with_prompt(config, **prompt))
    assert message in out
    assert not Path(config["output_dir"]).exists()


def test_a_prompt_longer_than_the_models_context_names_the_model_not_the_setting(tmp_path, config, bert_mlm):
    cfg = {**with_prompt(config, template="very " * 70 + "{text} It was {mask}."), "model": {"name_or_path": bert_mlm}}
    out = fails(tmp_path, cfg)
    assert "does not fit the model's context of 64 tokens" in out
    assert "prompt.context_length" not in out  # not set, so not the limit to raise


def test_label_words_unknown_to_the_tokenizer(tmp_path, config, bert_mlm):
    cfg = {**with_prompt(config, verbalizer={"negative": ["terrible"], "positive": ["€"]}),
           "model": {"name_or_path": bert_mlm}}
    assert "label word '€' of class 'positive' is unknown to the tokenizer" in fails(tmp_path, cfg)


def test_wrong_models_and_adapters_are_refused(tmp_path, config, bert_mlm, tokenizer_dir):
    assert "only for causal LMs" in fails(tmp_path, {**with_prompt(config, chat_template=True),
                                                     "model": {"name_or_path": bert_mlm}})
    assert "mode zero-shot trains nothing" in fails(tmp_path, {**config, "adapter": {"method": "lora"}})
    assert "use prompt.mode: soft-prompt" in fails(tmp_path, {
        **with_prompt(config, mode="few-shot", shots_per_class=4), "adapter": {"method": "prompt_tuning"}})
    assert "not lora (for lora, use prompt.mode: few-shot)" in fails(tmp_path, {
        **with_prompt(config, mode="soft-prompt"), "adapter": {"method": "lora"}})
    classifier = tmp_path / "classifier"
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(classifier)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(classifier)
    classifier_config = {**config, "model": {"name_or_path": str(classifier)}}
    assert "is a sequence-classification model" in fails(tmp_path, classifier_config)


def test_config_tools_know_prompt_configs(tmp_path, config):
    path = write_yaml(tmp_path / "p.yaml", config)
    result = invoke("config", "validate", path)
    assert result.exit_code == 0 and "valid prompt config" in result.output
    result = invoke("prompt", path, "--dry-run")
    assert result.exit_code == 0 and "example validation[0]: " in result.output
    assert not Path(config["output_dir"]).exists()


def test_a_model_without_its_language_model_head_is_refused(tmp_path, config, tokenizer_dir):
    """An encoder saved without its MLM head (like sentence-embedding checkpoints) would score label words with
    a random head."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    encoder = tmp_path / "encoder"
    BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(encoder)
    out = fails(tmp_path, {**config, "model": {"name_or_path": str(encoder)}})
    assert "has no pretrained language-model head" in out and "cls.predictions" in out


def scores_of(predictions: Path) -> list[float]:
    return [s for line in predictions.read_text().splitlines() for s in json.loads(line)["scores"].values()]


@pytest.mark.parametrize("mode, saved", [("few-shot", "model"), ("soft-prompt", "")])
def test_a_trained_run_rescored_zero_shot_gives_the_same_scores(tmp_path, config, mode, saved):
    """The saved model (or the soft-prompt adapter run, its virtual tokens in front) scored again with the same
    template reproduces the run's per-example scores."""
    _, metrics, out = run_prompt(tmp_path, with_prompt(config, mode=mode, shots_per_class=4, seeds=[1]))
    reference = str(out / "seed-1" / saved) if saved else str(out / "seed-1")
    _, again, out2 = run_prompt(tmp_path, {**config, "model": {"name_or_path": reference},
                                           "output_dir": str(tmp_path / "again")})
    assert again["eval_accuracy"] == metrics["eval_accuracy"]
    first, second = scores_of(out / "seed-1" / "predictions_validation.jsonl"), scores_of(
        out2 / "predictions_validation.jsonl")
    assert first == pytest.approx(second, abs=1e-4)
    if not saved:  # training on top of an adapter run is refused
        assert "is an adapter run" in fails(tmp_path, {**with_prompt(config, mode="few-shot", shots_per_class=4),
                                                       "model": {"name_or_path": reference},
                                                       "output_dir": str(tmp_path / "on-top")})


@pytest.mark.parametrize("change, message", [
    ({"prompt": {"seeds": [1, 1], "mode": "in-context", "demonstrations_per_class": 1}},
     "prompt.seeds: give one or more distinct seeds"),
    ({"prompt": {"calibration_inputs": ["nothing"]}}, "prompt.calibration_inputs: only applies with prompt.calibrate"),
    ({"prompt": {"soft_prompt_init": "random"}}, "prompt.soft_prompt_init: only applies to mode soft-prompt"),
    ({"prompt": {"demonstrations_per_class": 2}}, "prompt.demonstrations_per_class: only applies to mode in-context"),
    ({"prompt": {"mode": "few-shot", "shots_per_class": 4, "demonstration_separator": " "}},
     "prompt.demonstration_separator: only applies to mode in-context"),
    ({"prompt": {"mode": "few-shot", "shots_per_class": 0}}, "prompt.shots_per_class: must be >= 1"),
    ({"prompt": {"mode": "in-context"}}, "prompt.demonstrations_per_class: in-context needs the number"),
    ({"prompt": {"shots_per_class": 4}}, "prompt.shots_per_class: zero-shot does not train or sample"),
    ({"prompt": {"verbalizer": {}}}, "prompt.verbalizer: is empty"),
    ({"prompt": {"mode": "soft-prompt"}, "model": {"from_config": {"family": "llama"}}},
     "model.from_config: an adapter or soft prompt needs a pretrained base model"),
    ({"prompt": {"mode": "in-context", "demonstrations_per_class": 1}, "data": {"train_file": None}},
     "data.train_file: demonstrations are drawn from the training data"),
    ({"data": {"validation_file": None}}, "data.validation_file: prompt scores the validation data"),
    ({"prompt": {"template": "{text_a} ? {mask} , {text_b}"}}, "{text_b} needs data.text_pair_column"),
    ({"prompt": {"verbalizer": {"negative": ["bad"], "positive": ["good"], "neutral": ["ok"]}}},
     "prompt.verbalizer: 'neutral' is not a class"),
    ({"prompt": {"mode": "soft-prompt", "shots_per_class": 4, "head_baseline": True},
      "adapter": {"method": "prefix_tuning"}}, "(prompt.head_baseline trains a classification head with it)"),
])
def test_more_bad_settings_exit_2_naming_the_key(tmp_path, config, change, message):
    cfg = {**config, **{k: {**config.get(k, {}), **v} if k != "model" else v for k, v in change.items()}}
    out = fails(tmp_path, cfg)
    assert message in out, out
    assert not Path(config["output_dir"]).exists()
