"""model.from_config: the documented size defaults hold for every family."""

from __future__ import annotations

import pytest

from llmkit.config.sections import FromConfigSpec
from llmkit.models.loading import build_model_config


@pytest.mark.parametrize("family, field", [("bert", "intermediate_size"), ("llama", "intermediate_size"),
                                           ("gpt2", "n_inner")])
def test_feed_forward_width_defaults_to_four_times_hidden(family, field, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = build_model_config(FromConfigSpec(family=family, hidden_size=48, num_heads=2), tok)
    assert getattr(config, field) == 192
    config = build_model_config(FromConfigSpec(family=family, hidden_size=48, num_heads=2, intermediate_size=100), tok)
    assert getattr(config, field) == 100


def test_gpt2_gets_the_one_kernel_tanh_gelu_unless_extra_sets_one(tokenizer_dir):
    import torch
    from transformers import AutoTokenizer
    from transformers.activations import ACT2FN

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = build_model_config(FromConfigSpec(family="gpt2", hidden_size=48, num_heads=2), tok)
    assert config.activation_function == "gelu_pytorch_tanh"
    x = torch.linspace(-8, 8, 10_001)
    torch.testing.assert_close(ACT2FN["gelu_pytorch_tanh"](x), ACT2FN["gelu_new"](x), rtol=1e-5, atol=1e-6)
    chosen = FromConfigSpec(family="gpt2", hidden_size=48, num_heads=2, extra={"activation_function": "gelu_new"})
    assert build_model_config(chosen, tok).activation_function == "gelu_new"
