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
