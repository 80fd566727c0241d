"""A BERT-family model whose attention heads `llmkit compress` pruned: the record in its config and the shapes.

A BERT config derives the head size from hidden_size / num_attention_heads, so that count must stay when heads
are removed; the heads kept per layer are recorded as `llmkit_attention_heads` in config.json. BERT's attention
reshapes q, k and v to (-1 heads, head size), so smaller projections are all the model needs: llmkit's loaders
(low_rank.from_pretrained, dynamic_int8.load) build the model from its config, call `shrink_heads`, then load
the weights. Plain transformers cannot (the saved projections do not fit the config's sizes).
"""

from __future__ import annotations

from typing import Any

HEADS_KEY = "llmkit_attention_heads"


def kept_heads(config: Any) -> int | None:
    return getattr(config, HEADS_KEY, None)


def shrink_heads(model: Any) -> None:
    """Make every BERT attention block's query, key, value and output projections the pruned size (fresh
    weights: the saved ones are loaded next); nothing for a model without the record."""
    import torch

    kept = kept_heads(model.config)
    if not kept:
        return
    size = model.config.hidden_size // model.config.num_attention_heads
    for block in model.modules():  # BertAttention: .self (query, key, value) and .output (dense)
        attention, output = getattr(block, "self", None), getattr(block, "output", None)
        if attention is None or output is None or not hasattr(attention, "query"):
            continue
        for name in ("query", "key", "value"):
            old = getattr(attention, name)
            setattr(attention, name, torch.nn.Linear(old.in_features, kept * size, bias=old.bias is not None))
        old = output.dense
        output.dense = torch.nn.Linear(kept * size, old.out_features, bias=old.bias is not None)
