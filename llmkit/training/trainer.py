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

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Nor is it normalised over the processes: for a model taking **kwargs the Trainer multiplies the loss by
        # the number of processes (assuming it was divided by every rank's num_items_in_batch), so under DDP the
        # gradients of a per-batch mean came out world_size x too large. The model gets no num_items_in_batch
        # either, so a head whose loss_function would use it still returns a per-batch mean.
        self.model_accepts_loss_kwargs = False


def per_example_nll(logits, labels, shift: bool):
    """Summed float32 negative log-likelihood and the number of scored tokens of each row.

    Causal LMs (`shift`): the logits at position i predict the label at i + 1; positions labelled -100 are
    not scored.
    """
    import torch.nn.functional as F

    if shift:  # shift the labels, not the logits: slicing the logits would copy all of them once more
        labels = F.pad(labels[:, 1:], (0, 1), value=-100)
    # Over a flat (tokens, vocabulary) view: with the vocabulary as dim 1 of a transposed tensor, the log-softmax
    # walks memory with a stride and a training step of the tiny GPT-2 ran ~15 % slower (scripts/bench).
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                          reduction="none").view(labels.shape)
    return nll.sum(dim=1), (labels != -100).sum(dim=1)


class TokenLossTrainer(Trainer):
    """Language-model pretraining: the loss is the mean negative log-likelihood per predicted token.

    Training: summed token NLL over the tokens of the whole gradient-accumulation window (`num_items_in_batch`,
    counted by the Trainer across ranks), the same for causal and masked LMs (BERT's MLM head returns a
    per-micro-batch mean that transformers 5 would not rescale under accumulation). Evaluation: the NLL sum
    and token count of every row are gathered, so `eval_loss` is exp-able into the perplexity of the whole
    validation set (a mean of per-batch means is not, when batches differ in scored tokens).
    """

    def __init__(self, *args, shift_labels: bool, **kwargs):
        super().__init__(*args, compute_loss_func=self._token_loss, compute_metrics=self._perplexity, **kwargs)
        self.shift_labels = shift_labels
        # transformers counts num_items_in_batch over labels[..., 1:] only for models whose loss_type is
        # ForCausalLM; GPT-2's is None, so say what this loss shifts.
        self._loss_shifts_labels = shift_labels

    def _token_loss(self, outputs, labels, num_items_in_batch=None):
        nll, count = per_example_nll(outputs.logits, labels, self.shift_labels)
        denominator = num_items_in_batch if num_items_in_batch is not None else count.sum().clamp(min=1)
        return nll.sum() / denominator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        import torch

        inputs = self._prepare_inputs(inputs)
        labels = inputs.pop("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**inputs).logits
        nll, count = per_example_nll(logits, labels, self.shift_labels)
        stats = torch.stack([nll, count.float()], dim=1)
        return (nll.sum() / count.sum().clamp(min=1)).detach(), stats, stats

    @staticmethod
    def _perplexity(prediction) -> dict:
        import math

        nll, tokens = prediction.predictions[:, 0].sum(), prediction.predictions[:, 1].sum()
        loss = float(nll / max(tokens, 1))
        return {"token_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens)}

    def evaluation_loop(self, *args, **kwargs):
        counting = getattr(self.data_collator, "counting", None)
        if counting is not None:
            self.data_collator.counting = False  # evaluation batches are not training padding
        try:
            output = super().evaluation_loop(*args, **kwargs)
        finally:
            if counting is not None:
                self.data_collator.counting = counting
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        token_loss = output.metrics.pop(f"{prefix}_token_loss", None)
        if token_loss is not None:
            output.metrics[f"{prefix}_loss"] = token_loss  # the token-weighted mean, not the per-batch mean
        return output
