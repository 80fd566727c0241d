"""Helpers for recipe tests."""

from __future__ import annotations


def initial_weights(config: dict) -> dict:
    """The state dict a from_config model starts with under the config's seed (as llmkit builds it)."""
    from transformers import AutoTokenizer, set_seed

    from llmkit.config import load_config
    from llmkit.models.loading import load_model
    from llmkit.recipes.finetune import FinetuneConfig

    cfg = load_config(FinetuneConfig, None, data=config)
    set_seed(cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer.name_or_path)
    model, _ = load_model("AutoModelForSequenceClassification", cfg.model, tokenizer, num_labels=2)
    return {k: v.clone() for k, v in model.state_dict().items()}


def invoke(*args):
    """Run the real CLI in-process (typer's CliRunner); arguments may be paths."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def save_model_dir(tmp_path_factory, name: str, model, tokenizer) -> str:
    """Save a tiny model with its tokenizer like a downloaded checkpoint; return the directory."""
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


SENTIMENT_LABELS = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}


def tiny_bert_config(tokenizer, num_hidden_layers: int = 2, labels: bool = True, **extra):
    """The tests' tiny BERT config (hidden 32, 2 heads, 64 positions) for `tokenizer`; with the sentiment labels
    (negative/positive) unless `labels` is False. `extra` overrides any field (e.g. dropout)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                      pad_token_id=tokenizer.pad_token_id, **(SENTIMENT_LABELS if labels else {}), **extra)
