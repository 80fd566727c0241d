"""Contrastive training of sentence embeddings on llmkit's Trainer.

The model, the pooling, the saved format and the losses are sentence-transformers' own (the reference
implementations): `MultipleNegativesRankingLoss` (InfoNCE with in-batch negatives: SimCSE, supervised or not),
`CoSENTLoss` and `CosineSimilarityLoss` for scored pairs. What is written here by hand is the glue to llmkit's
Trainer (GuardedTrainer: the non-finite guard, Ctrl-C / SIGTERM checkpoints, exact resume, CPU dropout,
checkpoints written whole), which sentence-transformers' own trainer would replace: the collator, the loss step,
the evaluation step (cosine similarities for Spearman / Pearson) and the token count.

Unsupervised SimCSE passes each sentence twice through the encoder with dropout on; the two views go through
one forward pass as one batch of twice the rows (faster than two passes), split after pooling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmkit.errors import UserError
from llmkit.training.trainer import MeanLossTrainer

LOSSES = ("auto", "in-batch-negatives", "cosent", "cosine")


class SentenceEncoder(nn.Module):
    """What trains: a SentenceTransformer (encoder + pooling), and for `cls` pooling in SimCSE the MLP over the
    [CLS] vector that is used in training only (Gao et al. 2021) and not saved with the model."""

    main_input_name = "features"  # the Trainer counts tokens itself (ContrastiveTrainer._track_num_input_tokens)

    def __init__(self, sentence_model: Any, mlp_head: bool = False):
        super().__init__()
        self.sentence = sentence_model
        width = sentence_model.get_embedding_dimension()
        self.head = nn.Sequential(nn.Linear(width, width), nn.Tanh()) if mlp_head else None

    @property
    def encoder(self) -> Any:
        """The transformers model inside (what model.freeze_*, the length check and PEFT adapters act on)."""
        return self.sentence[0].auto_model

    @property
    def config(self) -> Any:
        return self.encoder.config

    @property
    def base_model(self) -> Any:
        return self.encoder.base_model

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_attn_implementation(self, implementation: str) -> None:
        self.encoder.set_attn_implementation(implementation)

    def forward(self, features: dict) -> torch.Tensor:
        embedding = self.sentence(features)["sentence_embedding"]
        return self.head(embedding) if self.head is not None and self.training else embedding


def make_loss(kind: str, sentence_model: Any, temperature: float, gather: bool) -> Any:
    """The sentence-transformers loss for a task.loss / pretrain objective."""
    from sentence_transformers.sentence_transformer.losses import (
        CoSENTLoss,
        CosineSimilarityLoss,
        MultipleNegativesRankingLoss,
    )

    if kind == "in-batch-negatives":
        return MultipleNegativesRankingLoss(sentence_model, scale=1.0 / temperature, gather_across_devices=gather)
    if kind == "cosent":
        return CoSENTLoss(sentence_model)
    return CosineSimilarityLoss(sentence_model)


class PairCollator:
    """Pads each text role of a batch to its own longest row; `views`: one role passed twice (SimCSE), as one
    batch of twice the rows."""

    def __init__(self, tokenizer: Any, roles: list[str], views: int = 1):
        self.tokenizer, self.roles, self.views = tokenizer, roles, views

    def __call__(self, rows: list[dict]) -> dict:
        features = []
        for role in self.roles:
            ids = [row[f"{role}_input_ids"] for row in rows] * self.views
            features.append(dict(self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")))
        return {"features": features, "labels": torch.tensor([row["labels"] for row in rows], dtype=torch.float),
                "views": self.views}


class ContrastiveTrainer(MeanLossTrainer):
    """Computes a sentence-transformers loss on the pooled embeddings of each role of the batch."""

    def __init__(self, *args, pair_loss: Any, **kwargs):
        super().__init__(*args, **kwargs)
        self.pair_loss = pair_loss

    def embeddings(self, model: Any, inputs: dict) -> list[torch.Tensor]:
        out = [model(features) for features in inputs["features"]]
        views = inputs.get("views", 1)
        if views > 1:  # one role encoded as `views` copies in one pass: split into the views
            return list(out[0].chunk(views))
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        embeddings = self.embeddings(model, inputs)
        loss = self.pair_loss.compute_loss_from_embeddings(embeddings, inputs["labels"])
        return (loss, {"embeddings": embeddings}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss, and each (anchor, positive) pair's embeddings side by side as the prediction: the metrics
        take their cosine similarity as `llmkit eval` does (float64), for Spearman / Pearson against the
        scores."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, out = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        anchor, positive = out["embeddings"][0], out["embeddings"][1]
        return loss.detach(), torch.cat([anchor, positive], dim=-1).float(), inputs["labels"]

    def _track_num_input_tokens(self, inputs):
        """Every role's non-padding tokens (the Trainer would look for input_ids at the top of the batch)."""
        if self.args.include_num_input_tokens_seen == "no":
            return
        tokens = sum(f["attention_mask"].sum() for f in inputs["features"]).to(self.args.device)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens).sum())


class SimilarityMetrics:
    """Spearman and Pearson correlation of the pairs' cosine similarity with the gold scores (Trainer's
    compute_metrics during training), computed as `llmkit eval` computes them (metrics/embedding.py), so a run's
    metrics.json and an eval of its model agree."""

    preprocess_logits_for_metrics = None

    def names(self) -> list[str]:
        return ["spearman", "pearson"]

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        from llmkit.metrics.embedding import paired_cosine, sts_correlations

        pairs = eval_pred.predictions
        anchor, positive = pairs[:, : pairs.shape[1] // 2], pairs[:, pairs.shape[1] // 2:]
        return sts_correlations(paired_cosine(anchor, positive), eval_pred.label_ids)


def check_batch_for_negatives(batch_size: int, world_size: int) -> None:
    """In-batch negatives need another sentence in the batch: a batch of one has none."""
    if batch_size * world_size < 2:
        raise UserError("train.per_device_train_batch_size: 1 leaves no other sentence in the batch to be a "
                        "negative for an in-batch-negatives loss; use a batch of 2 or more (32-256 is usual).")


def negatives_line(batch_size: int, world_size: int, gathered: bool, candidates_per_row: int = 1) -> str:
    """How many in-batch negatives each anchor is scored against, for the plan: every other row's positive, and
    every row's hard negative when the data has them (`candidates_per_row` 2)."""
    rows = batch_size * (world_size if gathered else 1)
    how = f"gathered from {world_size} processes" if gathered and world_size > 1 else "its own batch"
    others = rows * candidates_per_row - 1
    what = "positives" if candidates_per_row == 1 else "candidates"
    return f"in-batch negatives: each anchor against {others} other {what} ({how})"
