"""Narrow Trainer subclasses."""

from __future__ import annotations

from transformers import Trainer


class MeanLossTrainer(Trainer):
    """For models whose loss is a per-micro-batch mean (sequence classification heads).

    transformers 5 treats a loss as already normalised over the gradient
    accumulation window when the model's forward takes **kwargs (BERT's does),
    and then skips the division by `gradient_accumulation_steps`, making loss
    and gradients GA x too large (TRANSFORMERS5.md §2). Declaring the loss
    unscaled restores the division, so GA 4 x batch 8 trains like batch 32.
    """

    loss_is_scaled_for_ga = False
