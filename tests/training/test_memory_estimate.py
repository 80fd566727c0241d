"""The memory estimate (training/memory.py): weights, gradients and optimizer states counted exactly from the
model; the activations estimate against the bytes autograd really keeps for the backward pass of a tiny model."""

from __future__ import annotations

import pytest

from llmkit.training.memory import Workload, estimate


def tiny_llama(dropout: float = 0.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                        attention_dropout=dropout))


def kept_bytes(model, rows: int, length: int) -> int:
    """The bytes of the distinct tensors autograd saves in a forward pass and the fp32 loss (measured)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (rows, length))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def test_weights_gradients_and_optimizer_states_are_exact():
    model = tiny_llama()
    total = sum(p.numel() for p in model.parameters()) * 4  # fp32; the LM head is tied or not: counted once
    found = estimate(model, Workload(rows=2, length=16, logits=True, mixed=False))
    assert found.parameters == total and found.gradients == total and found.optimizer == 2 * total
    model.model.embed_tokens.weight.requires_grad_(False)  # frozen weights: no gradient, no optimizer state
    frozen = estimate(model, Workload(rows=2, length=16, logits=True, mixed=False), optim="sgd")
    trainable = total - model.model.embed_tokens.weight.numel() * 4
    assert frozen.gradients == trainable and frozen.optimizer == 0 and frozen.parameters == total
    assert estimate(model, Workload(2, 16, True, False), frozen=(model,)).frozen == total  # a reference copy


def tiny_gpt2():
    """GPT-2: dropout everywhere (CPU attention then keeps its probabilities) and the Python gelu_new."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                      bos_token_id=0, eos_token_id=0))


@pytest.mark.parametrize("build", [tiny_llama, lambda: tiny_llama(0.1), tiny_gpt2], ids=["llama", "dropout", "gpt2"])
def test_activations_within_a_third_of_what_autograd_keeps(build):
    model = build()
    work = Workload(rows=4, length=32, logits=True, mixed=False)
    found = estimate(model, work).activations
    measured = kept_bytes(model, 4, 32)
    assert 0.67 * measured < found < 1.5 * measured, (found, measured)


def test_checkpointing_and_mixed_precision_shrink_activations_and_add_copies():
    model = tiny_llama()
    plain = estimate(model, Workload(rows=4, length=32, logits=False, mixed=False))
    checkpointed = estimate(model, Workload(rows=4, length=32, logits=False, mixed=False, checkpointing=True))
    mixed = estimate(model, Workload(rows=4, length=32, logits=False, mixed=True))
    assert checkpointed.activations < plain.activations and mixed.activations < plain.activations
    assert mixed.casts == plain.gradients // 2 and plain.casts == 0  # bf16 copies of the fp32 trainable weights
    longer = estimate(model, Workload(rows=4, length=64, logits=False, mixed=False))
    assert longer.activations == 2 * plain.activations  # linear in tokens without eager attention


def test_the_fused_loss_keeps_no_float32_logits():
    """With the LM head fused into the loss (training/fused_loss.py) the estimate drops the logits' fp32 copies, and
    stays within reach of what autograd keeps then plus the logits' gradient the fused forward builds."""
    import torch

    from llmkit.training.fused_loss import causal_lm_loss, fused_head

    model = tiny_llama()
    rows, length, vocab = 8, 64, model.config.vocab_size
    logits = estimate(model, Workload(rows=rows, length=length, logits=True, mixed=False))
    fused = estimate(model, Workload(rows=rows, length=length, logits=True, mixed=False, fused=True))
    assert fused.activations <= logits.activations - (rows * length - 128) * vocab * 8
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, vocab, (rows, length))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_loss(*fused_head(model), {"input_ids": ids}, ids, None)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = sum(n for ptr, n in seen.items() if ptr not in params)
    transient = rows * length * vocab * 4  # the forward's gradient of the logits, freed before the backward
    assert 0.67 * kept < fused.activations < 1.5 * (kept + transient), (fused.activations, kept)
