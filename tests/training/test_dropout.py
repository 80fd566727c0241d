"""llmkit's CPU dropout (train.cpu_dropout=fast): the masks are dropout's, and every dropout of a step uses them."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmkit.training import dropout as fast
from llmkit.training.dropout import LANES, CpuDropout, cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_masks_drop_at_rate_p_independently_and_keep_the_mean(p):
    torch.manual_seed(0)
    out = cpu_dropout(torch.ones(4_000_000), p)
    dropped = (out == 0).float()
    effective = round(p * LANES) / LANES
    sigma = (effective * (1 - effective) / out.numel()) ** 0.5
    assert abs(dropped.mean().item() - effective) < 5 * sigma
    assert abs(effective - p) <= 0.5 / LANES
    # kept values carry exactly 1 / (1 - p'), so the expectation is the input's
    assert torch.all((out == 0) | (out == LANES / (LANES - round(p * LANES))))
    assert abs(out.mean().item() - 1) < 6 * sigma / (1 - effective)
    # the four lanes of one 64-bit draw are independent of each other: P(both dropped) = p'^2 for each pair
    lanes = dropped.view(-1, 4)
    for a, b in ((0, 1), (1, 2), (2, 3), (0, 3)):
        both = (lanes[:, a] * lanes[:, b]).mean().item()
        assert abs(both - effective**2) < 6 * (effective**2 / lanes.shape[0]) ** 0.5, (a, b)


def test_backward_uses_the_forward_mask_and_dtype_and_shape_are_kept():
    torch.manual_seed(1)
    x = torch.randn(3, 5, 7, requires_grad=True)
    y = cpu_dropout(x, 0.3)
    y.backward(torch.full_like(y, 2.0))
    scale = LANES / (LANES - round(0.3 * LANES))
    kept = y != 0
    assert torch.allclose(y[kept], x.detach()[kept] * scale)
    assert torch.equal(x.grad, kept.float() * 2.0 * scale)
    half = torch.randn(40, 9, dtype=torch.bfloat16)
    out = cpu_dropout(half, 0.1)
    assert out.dtype == torch.bfloat16  # scale rounded to bf16, as in torch's own dropout of a bf16 tensor
    assert torch.equal(out[out != 0], half[out != 0] * torch.tensor(LANES / (LANES - round(0.1 * LANES))).bfloat16())
    assert cpu_dropout(torch.randn(4, 9), 0.1).shape == (4, 9)


def test_masks_follow_torchs_seed_and_generator_state():
    torch.manual_seed(7)
    first = cpu_dropout(torch.ones(1000), 0.5)
    second = cpu_dropout(torch.ones(1000), 0.5)
    torch.manual_seed(7)
    assert torch.equal(cpu_dropout(torch.ones(1000), 0.5), first)
    assert not torch.equal(first, second)
    state = torch.get_rng_state()  # what a checkpoint's rng_state.pth holds
    again = cpu_dropout(torch.ones(1000), 0.5)
    torch.set_rng_state(state)
    assert torch.equal(cpu_dropout(torch.ones(1000), 0.5), again)


def test_cases_it_does_not_cover_go_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(fast._MaskedScale, "apply", lambda *a: calls.append(a) or a[0])
    x = torch.randn(8, 8)
    assert torch.equal(cpu_dropout(x, 0.1, training=False), x)
    cpu_dropout(x.clone(), 0.1, inplace=True)
    cpu_dropout(x, 1e-7)  # rounds to 0 of 65,536
    cpu_dropout(x, 1.0)
    cpu_dropout(torch.ones(8, dtype=torch.int64).float(), 0.0)
    assert calls == []
    cpu_dropout(x, 0.1)
    assert len(calls) == 1


def test_the_mode_covers_dropout_modules_and_the_functional_dropout_of_eager_attention(monkeypatch):
    from transformers import BertConfig, BertForSequenceClassification

    calls = []
    apply = fast._MaskedScale.apply
    monkeypatch.setattr(fast._MaskedScale, "apply", lambda *a: calls.append(a[0].dim()) or apply(*a))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, attn_implementation="eager")
    model = BertForSequenceClassification(config).train()
    batch = {"input_ids": torch.randint(0, 50, (2, 6)), "labels": torch.tensor([0, 1])}
    with CpuDropout():
        model(**batch).loss.backward()
    # embeddings, per layer: attention probabilities (4-d) + attention output + feed-forward output, classifier
    assert sorted(calls) == sorted([3] + [4, 3, 3] * 2 + [2])
    calls.clear()
    model(**batch)  # outside the mode: torch's dropout
    model.eval()
    with CpuDropout():
        model(**batch)  # evaluation: no dropout at all
    assert calls == []
    # other functions pass through unchanged
    with CpuDropout():
        assert torch.equal(F.relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_attention_switch_reads_each_familys_attention_dropout_and_padding_stays_off_on_cpu():
    from transformers import BertConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from llmkit.training.arguments import attention_dropout, cpu_training_attention, pad_multiple

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, attn_implementation="sdpa"))
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                         intermediate_size=32, vocab_size=40, attn_implementation="sdpa"))
    assert attention_dropout(gpt2) == 0.1 and attention_dropout(llama) == 0.0
    assert attention_dropout(type("M", (), {"config": BertConfig(attention_probs_dropout_prob=0.2)})()) == 0.2
    # fp32: only a model with attention dropout, only with fast dropout, only on CPU
    assert cpu_training_attention(llama, None, "fp32", "cpu", "fast") is None
    assert cpu_training_attention(gpt2, None, "fp32", "cuda", "fast") is None
    assert cpu_training_attention(gpt2, None, "fp32", "cpu", "torch") is None
    assert gpt2.config._attn_implementation == "sdpa"
    assert "attention dropout" in cpu_training_attention(gpt2, None, "fp32", "cpu", "fast")
    assert gpt2.config._attn_implementation == "eager"
    # bf16 packed rows (causal-LM SFT with task.packing) keep SDPA: eager would score the whole packed row
    assert cpu_training_attention(llama, None, "bf16", "cpu", "torch", packed=True) is None
    assert llama.config._attn_implementation == "sdpa"
    assert "bf16" in cpu_training_attention(llama, None, "bf16", "cpu", "torch")
    # padding to a multiple of 8 only where tensor cores want it
    assert pad_multiple("bf16", "cpu") is None and pad_multiple("fp32", "cuda") is None
    assert pad_multiple("bf16", "cuda") == 8 and pad_multiple("fp16", "cuda") == 8


def test_packed_rows_are_causal_lm_fine_tuning_with_packing():
    from llmkit.config import load_config
    from llmkit.recipes.adapter import AdapterConfig
    from llmkit.recipes.distill import DistillConfig
    from llmkit.recipes.finetune import FinetuneConfig
    from llmkit.training.arguments import packed_rows

    root = Path(__file__).resolve().parents[2] / "configs"
    shared = root.parent.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not beside this checkout")
    overrides = [f"data.data_dir={shared}"]
    sft = load_config(FinetuneConfig, root / "finetune" / "smollm2-alpaca.yaml", overrides)
    assert packed_rows(sft)
    sft.task.packing = False
    assert not packed_rows(sft)
    assert not packed_rows(load_config(FinetuneConfig, root / "finetune" / "minilm-sst2.yaml", overrides))
    lora_sft = load_config(AdapterConfig, root / "adapter" / "smollm2-alpaca-lora.yaml", overrides)
    assert packed_rows(lora_sft)
    # distill of a causal LM collates with the SFT task's collator: packed rows too
    distill = load_config(DistillConfig, root / "distill" / "gpt-tiny-wikitext2-half.yaml",
                          [f"data.data_dir={shared / 'wikitext2'}"])
    assert packed_rows(distill)
