"""llmkit pretrain through the real CLI: CLM and MLM from scratch with a trained tokenizer, continued pretraining,
resume, the size sweep, and the bad-input matrix. Models are 1-2 layer GPT-2 / BERT built from configs."""

from __future__ import annotations

import json
import math
import random

import pytest
from typer.testing import CliRunner

from llmkit.cli import app
from tests.conftest import write_yaml

runner = CliRunner()
WORDS = "the king said to the queen that the castle was cold and the night was long".split()


def repetitive_text(n_lines: int, seed: int) -> str:
    """Lines cut from a repeated sentence: easy to learn, so the loss must fall within a few steps."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        start = rng.randrange(len(WORDS))
        lines.append(" ".join((WORDS * 3)[start:start + rng.randint(6, 14)]))
    return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "text"
    d.mkdir()
    (d / "train.txt").write_text(repetitive_text(300, seed=1))
    (d / "valid.txt").write_text(repetitive_text(40, seed=2))
    return d


def gpt_config(tmp_path, corpus, **pretrain) -> dict:
    return {
        "model": {"from_config": {"family": "gpt2", "num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                  "max_position_embeddings": 64}},
        "tokenizer": {"train": {"type": "bpe", "vocab_size": 300}},
        "data": {"train_file": str(corpus / "train.txt"), "validation_file": str(corpus / "valid.txt")},
        "pretrain": {"objective": "clm", "block_size": 32, **pretrain},
        "train": {"max_steps": 30, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 5,
                  "seed": 0, "precision": "fp32", "save_strategy": "no", "eval_strategy": "no",
                  "disable_tqdm": True, "lr_scheduler_type": "constant"},
        "output_dir": str(tmp_path / "run"),
    }


def bert_config(tmp_path, corpus, **pretrain) -> dict:
    cfg = gpt_config(tmp_path, corpus, objective="mlm", **pretrain)
    cfg["model"]["from_config"].update(family="bert", intermediate_size=64)
    cfg["tokenizer"]["train"] = {"type": "wordpiece", "vocab_size": 200}
    return cfg


def pretrain(tmp_path, config: dict, *args: str):
    return runner.invoke(app, ["pretrain", str(write_yaml(tmp_path / "pretrain.yaml", config)), *args])


def read_run(run) -> tuple[dict, list[dict]]:
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    return metrics, history


def test_clm_from_scratch_learns_and_saves_model_with_tokenizer(tmp_path, corpus):
    result = pretrain(tmp_path, gpt_config(tmp_path, corpus))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    metrics, history = read_run(run)
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] - 1.5, losses
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
    assert metrics["eval_perplexity"] < 20  # the repeated sentence is nearly predictable
    # only the batch holding the split's short last block is padded, once per epoch of training
    stats_line = next(line for line in result.output.splitlines() if line.startswith("tokenizer:"))
    assert "train" in stats_line
    assert 0 < metrics["train_padding_fraction"] < 32 / (30 * 8 * 32) * 2
    assert metrics["non_embedding_params"] < metrics["total_params"]
    assert "eval_perplexity=" in result.output and "trained (bpe" in result.output

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert len(tok) <= model.config.vocab_size and tok.eos_token == "<|endoftext|>"
    assert tok.decode(tok("the king said")["input_ids"]) == "the king said"
    assert (run / "report.md").is_file() and (run / "loss.png").is_file()


def test_llama_from_scratch_with_unigram_tokenizer_and_two_tokenizing_processes(tmp_path, corpus):
    config = gpt_config(tmp_path, corpus)
    config["model"]["from_config"].update(family="llama", intermediate_size=64)
    config["tokenizer"]["train"] = {"type": "unigram", "vocab_size": 200}
    config["data"]["preprocessing_num_workers"] = 2
    config["train"]["max_steps"] = 20
    result = pretrain(tmp_path, config)
    assert result.exit_code == 0, result.output
    metrics, history = read_run(tmp_path / "run")
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < 0.8 * losses[0], losses
    assert "LlamaForCausalLM" in result.output and "trained (unigram" in result.output

    evaluated = runner.invoke(app, ["eval", str(tmp_path / "run"), "--data", str(corpus / "valid.txt"),
                                    "-o", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads((tmp_path / "eval/eval.json").read_text())
    assert figures["metrics"]["eval_perplexity"] < 2 * metrics["eval_perplexity"]


def test_second_run_reuses_tokenizer_and_data_cache(tmp_path, corpus):
    config = gpt_config(tmp_path, corpus)
    config["train"]["max_steps"] = 2
    first = pretrain(tmp_path, config)
    second = pretrain(tmp_path, config, "--overwrite")
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert "prepared in" in first.output and "from cache in" in second.output
    assert "tokens), from cache" in second.output


def test_mlm_with_whole_word_masking(tmp_path, corpus):
    result = pretrain(tmp_path, bert_config(tmp_path, corpus, whole_word_mask=True))
    assert result.exit_code == 0, result.output
    metrics, history = read_run(tmp_path / "run")
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0], losses
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
    # validation masks are fixed: ~15 % of the validation tokens are scored
    assert 0.05 < metrics["eval_tokens"] / 40 / 10 < 0.4


def test_documents_by_paragraph_and_jsonl_text_column(tmp_path, corpus):
    paragraphs = "\n\n".join("line one of a speech\nand line two" for _ in range(20))
    (corpus / "plays.txt").write_text(paragraphs)
    config = gpt_config(tmp_path, corpus, documents="paragraph")
    config["data"] = {"train_file": str(corpus / "plays.txt")}
    config["train"]["max_steps"] = 1
    result = pretrain(tmp_path, config, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "train 20 documents" in result.output

    rows = [{"body": line} for line in repetitive_text(50, seed=3).splitlines()]
    (corpus / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = gpt_config(tmp_path, corpus)
    config["data"] = {"train_file": str(corpus / "docs.jsonl"), "text_column": "body", "validation_split": 0.1}
    result = pretrain(tmp_path, config, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "train 45 documents" in result.output and "validation 5 documents" in result.output


def test_continued_pretraining_of_an_existing_model(tmp_path, corpus, chat_tokenizer_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    base = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok),
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)).save_pretrained(base)
    tok.save_pretrained(base)
    config = gpt_config(tmp_path, corpus)
    config["model"] = {"name_or_path": str(base)}
    del config["tokenizer"]
    config["train"]["max_steps"] = 10
    result = pretrain(tmp_path, config)
    assert result.exit_code == 0, result.output
    metrics, _ = read_run(tmp_path / "run")
    assert metrics["eval_perplexity"] > 1 and "tokenizer: loaded" in result.output


def test_resume_continues_an_interrupted_run_to_the_same_weights(tmp_path, corpus):
    import torch
    from safetensors.torch import load_file

    config = gpt_config(tmp_path, corpus)
    config["train"].update(max_steps=6, save_strategy="steps", save_steps=3)
    config["output_dir"] = str(tmp_path / "full")
    assert pretrain(tmp_path, config).exit_code == 0

    config["output_dir"] = str(tmp_path / "parts")
    config["train"]["max_steps"] = 3  # "interrupted" after the checkpoint at step 3
    assert pretrain(tmp_path, config).exit_code == 0
    config["train"].update(max_steps=6, resume="auto")
    result = pretrain(tmp_path, config)
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output and "checkpoint-3" in result.output

    full = load_file(tmp_path / "full/model/model.safetensors")
    resumed = load_file(tmp_path / "parts/model/model.safetensors")
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-5, rtol=1e-4)


def test_sweep_trains_each_size_and_fits_a_power_law(tmp_path, corpus):
    config = gpt_config(tmp_path, corpus, max_tokens=2560,
                        sweep=[{"hidden_size": 16, "num_heads": 2}, {"hidden_size": 32}, {"hidden_size": 64,
                                                                                            "name": "wide"}])
    del config["train"]["max_steps"]
    result = pretrain(tmp_path, config)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    sweep = json.loads((run / "sweep.json").read_text())
    sizes = sweep["sizes"]
    assert [s["name"] for s in sizes] == ["0-L1-H16", "1-L1-H32", "wide"]
    assert len({s["train_tokens"] for s in sizes}) == 1  # the same token budget for every size
    # ceil(2560 / (8 x 32)) = 10 steps of 8 blocks; the split's short last block may fall into them
    assert 10 * 8 * 31 < sizes[0]["train_tokens"] <= 10 * 8 * 32
    assert sizes[0]["non_embedding_params"] < sizes[1]["non_embedding_params"] < sizes[2]["non_embedding_params"]
    fit = sweep["fit"]
    assert set(fit) >= {"alpha", "n_c", "r2"} and sweep["fit_on"] == "eval_loss"
    assert (run / "scaling.png").stat().st_size > 0
    assert f"alpha={fit['alpha']:.4f}" in result.output
    for s in sizes:
        assert (run / "sweep" / s["name"] / "model/model.safetensors").is_file()

    again = pretrain(tmp_path, {**config, "train": {**config["train"], "resume": "auto"}})
    assert again.exit_code == 0, again.output
    assert again.output.count("finished before; kept.") == 3


def error_of(tmp_path, config, *args) -> str:
    result = pretrain(tmp_path, config, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_empty_corpus(tmp_path, corpus):
    (corpus / "train.txt").write_text("\n   \n\n")
    assert "data.train_file" in error_of(tmp_path, gpt_config(tmp_path, corpus))


def test_block_size_larger_than_positions(tmp_path, corpus):
    out = error_of(tmp_path, gpt_config(tmp_path, corpus, block_size=128))
    assert "pretrain.block_size: 128" in out and "64 positions" in out


def test_vocab_smaller_than_special_tokens(tmp_path, corpus):
    config = bert_config(tmp_path, corpus)
    config["tokenizer"]["train"]["vocab_size"] = 4
    assert "tokenizer.train.vocab_size: 4" in error_of(tmp_path, config)


def test_objective_against_model_family(tmp_path, corpus):
    config = gpt_config(tmp_path, corpus, objective="mlm")
    out = error_of(tmp_path, config)
    assert "pretrain.objective" in out and "mlm needs an encoder" in out
    config = bert_config(tmp_path, corpus)
    config["pretrain"]["objective"] = "clm"
    assert "clm needs a causal decoder" in error_of(tmp_path, config)


def test_objective_against_an_existing_model(tmp_path, corpus, tokenizer_dir):
    from transformers import BertConfig, BertForMaskedLM

    base = tmp_path / "bert"
    BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                               vocab_size=200)).save_pretrained(base)
    config = gpt_config(tmp_path, corpus)
    config["model"] = {"name_or_path": str(base)}
    config["tokenizer"] = {"name_or_path": tokenizer_dir}
    assert "clm needs a causal decoder" in error_of(tmp_path, config)


def test_mlm_tokenizer_without_mask_token(tmp_path, corpus, chat_tokenizer_dir):
    config = bert_config(tmp_path, corpus)
    config["tokenizer"] = {"name_or_path": chat_tokenizer_dir}
    out = error_of(tmp_path, config)
    assert "mask token" in out and "pretrain.objective" in out


@pytest.mark.parametrize("change, needle", [
    ({"pretrain": {"objective": "clm", "whole_word_mask": True}}, "pretrain.whole_word_mask: only applies to "
                                                                  "objective: mlm"),
    ({"pretrain": {"sweep": [{"hidden_sise": 8}, {"hidden_size": 16}]}}, "did you mean hidden_size"),
    ({"pretrain": {"max_tokens": 100}, "train": {"max_steps": 5}}, "either pretrain.max_tokens or train.max_steps"),
    ({"tokenizer": {}}, "set tokenizer.train"),
    ({"pretrain": {"mask_replace_prob": 0.9, "random_replace_prob": 0.2, "objective": "mlm"}}, "exceeds 1"),
])
def test_config_mistakes(tmp_path, corpus, change, needle):
    config = gpt_config(tmp_path, corpus)
    for section, values in change.items():
        config[section] = values if section == "tokenizer" else {**config[section], **values}
    if config["pretrain"].get("objective") == "mlm":
        config["model"]["from_config"]["family"] = "bert"
        config["tokenizer"] = {"train": {"type": "wordpiece", "vocab_size": 200}}
    assert needle in error_of(tmp_path, config)
    assert not (tmp_path / "run").exists()  # nothing written for a rejected config


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_freeze_settings_apply_to_pretraining(tmp_path, corpus, tokenizer_dir, chat_tokenizer_dir, objective):
    """model.freeze_embeddings / freeze_layers: fewer trainable parameters, and the frozen weights stay as they
    were while the rest trains."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = tmp_path / "base"
    if objective == "clm":
        tok = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tok),
                                           eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
        frozen_prefixes = ("transformer.wte.", "transformer.wpe.", "transformer.h.0.")
        trained_layer = "transformer.h.1."
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = BertForMaskedLM(BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                           intermediate_size=64, max_position_embeddings=64, vocab_size=len(tok)))
        frozen_prefixes, trained_layer = ("bert.embeddings.", "bert.encoder.layer.0."), "bert.encoder.layer.1."
    model.save_pretrained(base)
    tok.save_pretrained(base)
    config = gpt_config(tmp_path, corpus, objective=objective)
    config["model"] = {"name_or_path": str(base), "freeze_embeddings": True, "freeze_layers": 1}
    del config["tokenizer"]
    config["train"]["max_steps"] = 4
    result = pretrain(tmp_path, config)
    assert result.exit_code == 0, result.output
    metrics, _ = read_run(tmp_path / "run")
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "run/model/model.safetensors")
    frozen = [k for k in before if k.startswith(frozen_prefixes)]
    assert len(frozen) > 10
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    layer = [k for k in before if k.startswith(trained_layer) and k.endswith("weight")]
    assert any(not torch.equal(after[k], before[k]) for k in layer)  # the rest trains
    assert metrics["trainable_params"] == metrics["total_params"] - sum(before[k].numel() for k in frozen)
