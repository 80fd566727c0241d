"""The fused LM-head cross-entropy (training/fused_loss.py): same loss and gradients as the logits path, used by the
causal-LM trainers' training steps only where the model's logits are exactly lm_head(hidden)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import llmkit.training.fused_loss as fused_loss
from llmkit.cli import app
from llmkit.training.fused_loss import LinearCrossEntropy, causal_lm_loss, fusable, fused_head
from tests.conftest import write_yaml
from tests.recipes.test_sft_recipe import sft_config  # noqa: F401 (fixture)

runner = CliRunner()


def reference(hidden, weight, targets, autocast: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = hidden @ weight.t()
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def gradients(loss_fn, hidden, weight, targets, autocast: bool, scale: float = 1.0):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(h, w, targets)
    (loss * scale).backward()
    return loss.detach(), h.grad, w.grad


def fused(h, w, targets):
    return LinearCrossEntropy.apply(h, w, targets)


def case(rows=300, width=24, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, width, generator=generator), torch.randn(vocab, width, generator=generator) * 0.3,
            torch.randint(0, vocab, (rows,), generator=generator))


@pytest.mark.parametrize("block_bytes", [1 << 28, 2 * 50 * 100])  # one block; blocks of 100 rows (300 = 3 blocks)
def test_matches_the_logits_path_in_float32(monkeypatch, block_bytes):
    monkeypatch.setattr(fused_loss, "CHUNK_ROWS", 7)  # chunks that do not divide the rows
    monkeypatch.setattr(fused_loss, "GRADIENT_BYTES", block_bytes)
    hidden, weight, targets = case()
    want = gradients(lambda h, w, t: reference(h, w, t, False), hidden, weight, targets, False)
    got = gradients(fused, hidden, weight, targets, False)
    assert got[0].dtype == torch.float32
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_matches_the_logits_path_under_bf16_autocast():
    hidden, weight, targets = case(rows=200, width=64, vocab=300)
    want = gradients(lambda h, w, t: reference(h, w, t, True), hidden, weight, targets, True)
    got = gradients(fused, hidden, weight, targets, True)
    assert got[0].dtype == torch.float32  # summed in float32, not rounded to bf16 as torch's chunked op returns it
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=0)
    for a, b in zip(got[1:], want[1:]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_scales_by_the_incoming_gradient_and_skips_a_frozen_weight():
    hidden, weight, targets = case()
    _, h_full, _ = gradients(fused, hidden, weight, targets, False)
    _, h_quarter, w_quarter = gradients(fused, hidden, weight, targets, False, scale=0.25)
    torch.testing.assert_close(h_quarter, h_full * 0.25)
    h = hidden.clone().requires_grad_()
    LinearCrossEntropy.apply(h, weight, targets).backward()  # weight without requires_grad: no weight gradient
    torch.testing.assert_close(h.grad, h_full)


def test_a_target_whose_probability_underflows_keeps_its_exact_loss():
    hidden, weight, targets = case(rows=4, width=2, vocab=3)
    hidden[0] = torch.tensor([60.0, 0.0])
    weight[:] = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])
    targets[0] = 2  # logit gap 360: exp underflows to 0 in float32
    got = LinearCrossEntropy.apply(hidden, weight, targets)
    want = reference(hidden, weight, targets, False)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)


# ---------------------------------------------------------------- which models, and the loss of a model


def tiny(family: str, **extra):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=120, **extra)
    else:
        config = LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=64, vocab_size=120, **extra)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_loss_and_gradients_equal_the_models_own(family):
    model = tiny(family).eval()  # no dropout: both sides see the same activations
    torch.manual_seed(1)
    ids = torch.randint(0, 120, (3, 20))
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt
    labels[2, 15:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0
    count = torch.tensor(40)
    model.zero_grad()
    want = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=count).loss
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    backbone, weight = fused_head(model)
    got = causal_lm_loss(backbone, weight, {"input_ids": ids, "attention_mask": mask}, labels, count)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # without a count: the mean over this batch's scored tokens, as transformers' ForCausalLMLoss
    mean = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(causal_lm_loss(backbone, weight, {"input_ids": ids, "attention_mask": mask},
                                              labels, None), mean, rtol=1e-5, atol=1e-6)


def test_which_models_use_it():
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    assert fused_head(tiny("gpt2")) is not None
    assert fused_head(tiny("llama")) is not None
    assert fused_head(tiny("llama", mlp_bias=False)) is not None
    lora = get_peft_model(tiny("llama"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    backbone, weight = fused_head(lora)
    assert weight is lora.get_base_model().lm_head.weight and backbone is lora.get_base_model().model
    assert fused_head(get_peft_model(tiny("llama"), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))) is None
    assert fused_head(get_peft_model(tiny("llama"), PrefixTuningConfig(task_type="CAUSAL_LM",
                                                                        num_virtual_tokens=3))) is None
    granite = tiny("llama")
    granite.config.model_type = "granite"  # scales its logits: not in FUSED_MODEL_TYPES
    assert fused_head(granite) is None
    biased = tiny("gpt2")
    biased.lm_head.bias = torch.nn.Parameter(torch.zeros(120))
    assert fused_head(biased) is None


def test_which_training_arguments_allow_it():
    from types import SimpleNamespace

    def args(**changes):
        base = {"device": torch.device("cpu"), "world_size": 1, "torch_compile": False, "label_smoothing_factor": 0.0}
        return SimpleNamespace(**{**base, **changes})

    assert fusable(args())
    assert not fusable(args(device=torch.device("cuda")))  # not timed on a GPU yet
    assert not fusable(args(world_size=2))  # DDP runs the wrapped model's forward
    assert not fusable(args(torch_compile=True))
    assert not fusable(args(label_smoothing_factor=0.1))  # the Trainer's label smoother needs the logits


# ---------------------------------------------------------------- the trainers


def run_sft(tmp_path, config, name: str) -> list[float]:
    config = {**config, "output_dir": str(tmp_path / name)}
    result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / f"{name}.yaml", config))])
    assert result.exit_code == 0, result.output
    history = (tmp_path / name / "log_history.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in history if '"loss"' in line]


def count_head_calls(monkeypatch) -> list[bool]:
    """Calls of an LM head's forward during training steps (grad enabled, training mode)."""
    calls: list[bool] = []
    forward = torch.nn.Linear.forward

    def counting(self, x):
        if self.out_features >= 100 and self.training and torch.is_grad_enabled():
            calls.append(True)
        return forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", counting)
    return calls


def test_sft_training_takes_the_fused_path_with_the_same_losses(tmp_path, monkeypatch, sft_config):  # noqa: F811
    sft_config["train"].update(num_train_epochs=2, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    calls = count_head_calls(monkeypatch)
    fused_losses = run_sft(tmp_path, sft_config, "fused")
    assert calls == []  # no training step multiplied the hidden states by the head outside the fused loss
    monkeypatch.setattr(fused_loss, "FUSED_MODEL_TYPES", frozenset())
    plain_losses = run_sft(tmp_path, sft_config, "plain")
    assert calls  # the model's own forward runs the head
    assert fused_losses == pytest.approx(plain_losses, rel=1e-4)


def test_bf16_training_runs_the_fused_head_under_autocast(tmp_path, monkeypatch, sft_config):  # noqa: F811
    seen: list[bool] = []
    forward = LinearCrossEntropy.forward

    def recording(ctx, hidden, weight, targets):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(ctx, hidden, weight, targets)

    monkeypatch.setattr(LinearCrossEntropy, "forward", staticmethod(recording))
    sft_config["train"].update(num_train_epochs=1, precision="bf16")
    run_sft(tmp_path, sft_config, "bf16")
    assert seen and all(seen)  # the backbone and the head in bf16, as accelerate runs the model's own forward


def test_label_smoothing_still_smooths_sft_and_is_refused_by_pretrain(tmp_path, sft_config):  # noqa: F811
    sft_config["train"]["num_train_epochs"] = 1
    plain = run_sft(tmp_path, sft_config, "plain")
    sft_config["train"]["label_smoothing_factor"] = 0.2
    smoothed = run_sft(tmp_path, sft_config, "smoothed")
    assert smoothed[0] > plain[0] + 0.01  # the same first steps, smoothed: a larger loss (5.85 vs 5.81)
    pretrain = {"model": sft_config["model"], "tokenizer": sft_config["tokenizer"],
                "data": {"train_file": str(tmp_path / "text.txt")}, "pretrain": {"objective": "clm", "block_size": 16},
                "train": {**sft_config["train"], "label_smoothing_factor": 0.2, "max_steps": 1},
                "output_dir": str(tmp_path / "pretrain")}
    (tmp_path / "text.txt").write_text("a few words of plain text to pretrain on\n" * 40)
    result = runner.invoke(app, ["pretrain", str(write_yaml(tmp_path / "pretrain.yaml", pretrain))])
    assert result.exit_code == 2, result.output
    assert "train.label_smoothing_factor: 0.2" in result.output and "TokenLossTrainer" in result.output


def test_the_printed_memory_estimate_counts_the_fused_loss(tmp_path, monkeypatch, sft_config):  # noqa: F811
    """A dry run's memory line: smaller activations where the fused loss will run than with the logits."""
    import re

    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

    def activations(name: str) -> float:
        config = {**sft_config, "output_dir": str(tmp_path / name)}
        result = runner.invoke(app, ["finetune", str(write_yaml(tmp_path / f"{name}.yaml", config)), "--dry-run"])
        assert result.exit_code == 0, result.output
        value, unit = re.search(r"activations ([0-9.]+) (KiB|MiB|GiB)", result.output).groups()
        return float(value) * units[unit]

    sft_config["model"]["from_config"]["vocab_size"] = 4000  # logits large enough to show in MiB
    fused = activations("fused")
    monkeypatch.setattr(fused_loss, "FUSED_MODEL_TYPES", frozenset())
    assert fused < activations("logits") - 2 * (1 << 20)  # 8 MiB against 11 MiB
