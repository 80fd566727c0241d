"""Preference tuning (DPO, IPO) on llmkit's Trainer.

The batch layout is trl's (`DataCollatorForPreference`: the chosen rows, then the rejected rows, with a
completion mask) and the losses are trl 1.16's `DPOTrainer` losses for `loss_type` sigmoid and ipo
(length-normalised, as trl and the IPO authors do); `label_smoothing` > 0 makes the sigmoid loss conservative
DPO, -(1 - e) log s(b d) - e log s(-b d), the form trl's sigmoid loss had before 1.0. The trainer is
llmkit's GuardedTrainer rather than trl's DPOTrainer, because DPOTrainer
- takes its own DPOConfig, where llmkit builds TrainingArguments from its checked `train:` section;
- tokenizes the data itself (llmkit renders and masks pairs with SFT's code and counts what it drops);
- keeps a second "ref" copy of the adapter for a PEFT model, and for full fine-tuning loads the reference
  again from model.config's name (which a pkg: model, a GGUF file or a model built from a config lacks);
- would replace GuardedTrainer (non-finite guard, Ctrl-C / SIGTERM checkpoints, whole checkpoints, exact resume).
The reference here is the model itself with its adapter disabled (no second copy), or a frozen copy of the
model for full fine-tuning. Dropout is switched off in the policy (as trl's disable_dropout does), so the
reference and the policy agree exactly before the first update.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.errors import UserError
from llmkit.training.trainer import MeanLossTrainer

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "logps/accuracies")
REWARD_METRICS = ("accuracy", "margin", "score/chosen", "score/rejected")
INSTALL = "pip install 'llmkit[preference]'"


def require_trl(key: str) -> None:
    """A clear error when the optional package is missing (checked before any work)."""
    if importlib.util.find_spec("trl") is None:
        raise UserError(f"{key}: preference tuning needs the trl package, which is not installed. Install it "
                        f"with: {INSTALL}.")


def preference_collator(pad_token_id: int, pad_to_multiple_of: int | None) -> Any:
    """trl's DataCollatorForPreference (trl's own log lines kept off the terminal)."""
    logging.getLogger("trl").setLevel(logging.ERROR)
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DataCollatorForPreference(pad_token_id=pad_token_id, pad_to_multiple_of=pad_to_multiple_of)


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference of full fine-tuning: a copy of the untrained model, in eval mode, without gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def no_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def completion_logps(logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of each row's completion tokens (next-token prediction), computed at the
    completion positions only (the prompt's logits never go through the vocabulary-sized softmax)."""
    mask = completion_mask[:, 1:].bool()
    picked = logits[:, :-1][mask].float()  # only the completion positions: [tokens, vocabulary]
    token = picked.gather(-1, input_ids[:, 1:][mask].unsqueeze(-1)).squeeze(-1) - picked.logsumexp(-1)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(len(mask), dtype=token.dtype, device=token.device).index_add(0, rows, token)


REFERENCE_FREE = ("simpo", "orpo")


def preference_loss(method: str, beta: float, label_smoothing: float, gamma: float, logps: tuple, ref: tuple,
                    lengths: tuple) -> torch.Tensor:
    """Per-pair loss from the chosen / rejected completion log-probs (summed over tokens), the reference's (0 for
    the reference-free methods) and the completion lengths: trl's sigmoid (dpo) and ipo losses, CPO's simpo loss
    and ORPO's loss (its odds-ratio term plus the chosen answer's per-token negative log-likelihood)."""
    chosen, rejected = logps[0] - ref[0], logps[1] - ref[1]
    mean_c, mean_r = chosen / lengths[0].clamp(min=1), rejected / lengths[1].clamp(min=1)
    if method in ("dpo", "simpo"):
        delta = beta * (chosen - rejected) if method == "dpo" else beta * (mean_c - mean_r) - gamma
        return -F.logsigmoid(delta) * (1 - label_smoothing) - F.logsigmoid(-delta) * label_smoothing
    if method == "ipo":
        return (mean_c - mean_r - 1 / (2 * beta)) ** 2
    if method == "orpo":
        def log1m_exp(x):  # log(1 - p) of a mean log-prob, kept finite when p rounds to 1
            return torch.log1p(-torch.exp(x).clamp(max=1 - 1e-6))

        log_odds = (mean_c - mean_r) - (log1m_exp(mean_c) - log1m_exp(mean_r))
        return -mean_c - beta * F.logsigmoid(log_odds)
    raise UserError(f"preference.method: {method} is not available")  # the config check refuses it earlier


class PreferenceTrainer(MeanLossTrainer):
    """DPO / IPO against a reference, SimPO / ORPO without one: the loss on the policy's completion log-probs;
    train figures (rewards, accuracies, margins, log-probs) logged with the loss, evaluation figures from
    PreferenceMetrics. Rewards: beta x the log-ratio to the reference (dpo, ipo), beta x the mean per-token
    log-prob (simpo, orpo), as trl reports them."""

    def __init__(self, *args, method: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0,
                 ref_model: Any = None, precompute: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.method, self.beta, self.label_smoothing, self.gamma = method, beta, label_smoothing, gamma
        no_dropout(self.model)
        self.ref_model = ref_model.to(self.args.device) if ref_model is not None else None
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_count = 0
        self._with_ref: dict[str, Any] = {}
        if precompute:  # every split, by name: the reference's log-probs added as columns, once, before training
            for name, ds in precompute.items():
                self._with_ref[ds._fingerprint] = self.add_reference(ds, name)
            self.train_dataset = self._swap(self.train_dataset)
            self.eval_dataset = self._swap(self.eval_dataset)

    def _swap(self, ds: Any) -> Any:
        return self._with_ref.get(getattr(ds, "_fingerprint", None), ds)

    def predict(self, test_dataset, *args, **kwargs):
        return super().predict(self._swap(test_dataset), *args, **kwargs)

    def add_reference(self, ds: Any, name: str) -> Any:
        """The split with ref_chosen_logps / ref_rejected_logps columns, from the untrained model (its adapter
        disabled), in batches of per_device_eval_batch_size."""
        size, chosen, rejected = self.args.per_device_eval_batch_size, [], []
        for start in range(0, len(ds), size):
            rows = [ds[i] for i in range(start, min(start + size, len(ds)))]
            batch = {k: v.to(self.args.device) for k, v in self.data_collator(rows).items()}
            c, r = self.reference(self.model, batch).chunk(2)
            chosen += c.tolist()
            rejected += r.tolist()
        return ds.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    def reference(self, model: Any, inputs: dict) -> torch.Tensor:
        """The reference's completion log-probs: the frozen copy, else the model with its adapter disabled."""
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
        with torch.no_grad():
            if self.ref_model is not None:
                logits = self.ref_model(**kwargs).logits
            else:  # an adapter: switched off; full fine-tuning: only before training (precompute_ref)
                unwrapped = self.accelerator.unwrap_model(model)
                with unwrapped.disable_adapter() if hasattr(unwrapped, "disable_adapter") else nullcontext():
                    logits = unwrapped(**kwargs).logits
            return completion_logps(logits, inputs["input_ids"], inputs["completion_mask"])

    def pair_figures(self, model: Any, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair loss, and per-pair [chosen reward, rejected reward, chosen logp, rejected logp, and the two
        mean per-token logps]."""
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        logps = completion_logps(logits, inputs["input_ids"], inputs["completion_mask"])
        lengths = inputs["completion_mask"][:, 1:].sum(-1)
        if self.method in REFERENCE_FREE:
            ref, rewards = torch.zeros_like(logps), self.beta * logps / lengths.clamp(min=1)
        elif "ref_chosen_logps" in inputs:  # precomputed
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
            rewards = self.beta * (logps - ref)
        else:
            ref = self.reference(model, inputs)
            rewards = self.beta * (logps - ref)
        loss = preference_loss(self.method, self.beta, self.label_smoothing, self.gamma, logps.chunk(2),
                               ref.chunk(2), lengths.chunk(2))
        figures = torch.stack([*rewards.chunk(2), *logps.chunk(2), *(logps / lengths.clamp(min=1)).chunk(2)], dim=-1)
        return loss, figures.detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, figures = self.pair_figures(model, inputs)
        if model.training:
            for name, value in summarise(figures).items():
                self._train_sums[name] = self._train_sums.get(name, 0) + value * len(figures)
            self._train_count += len(figures)
        loss = loss.mean()
        return (loss, {"figures": figures}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss, and each pair's figures as the prediction (PreferenceMetrics averages them)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, figures = self.pair_figures(model, inputs)
        if prediction_loss_only:
            return loss.mean().detach(), None, None
        return loss.mean().detach(), figures.float(), torch.zeros(len(figures), device=figures.device)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        """Training logs carry the pairs' mean figures since the last log (this process's pairs)."""
        if "loss" in logs and self._train_count:
            logs.update({k: round(float(v) / self._train_count, 6) for k, v in self._train_sums.items()})
            self._train_sums, self._train_count = {}, 0
        super().log(logs, start_time)


def summarise(figures: Any) -> dict[str, Any]:
    """Mean rewards, reward accuracy and margin, log-probs, and the log-prob preference accuracy (the share of
    pairs whose chosen answer has the higher mean per-token log-prob: the policy alone, no reference) of pairs'
    rows from PreferenceTrainer.pair_figures (tensors or arrays)."""
    def share(a: Any, b: Any) -> Any:
        return (a > b).float().mean() if hasattr(a, "float") else (a > b).mean()

    chosen, rejected = figures[:, 0], figures[:, 1]
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/accuracies": share(chosen, rejected), "rewards/margins": (chosen - rejected).mean(),
            "logps/chosen": figures[:, 2].mean(), "logps/rejected": figures[:, 3].mean(),
            "logps/accuracies": share(figures[:, 4], figures[:, 5])}


class PreferenceMetrics:
    """Evaluation figures over a whole split: mean implicit rewards (beta x the log-ratio to the reference), the
    share of pairs whose chosen reward is higher (rewards/accuracies), the mean margin, the mean log-probs."""

    preprocess_logits_for_metrics = None

    def names(self) -> list[str]:
        return list(METRICS)

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        return {k: float(v) for k, v in summarise(eval_pred.predictions).items()}


class RewardTrainer(MeanLossTrainer):
    """A reward model on preference pairs: the Bradley-Terry loss on the head's scores of the chosen and the
    rejected conversation (the batch's first and second half), -log sigmoid(chosen - rejected)."""

    def scores(self, model: Any, inputs: dict) -> torch.Tensor:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        return torch.stack(logits.squeeze(-1).float().chunk(2), dim=-1)  # [pairs, (chosen, rejected)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scores = self.scores(model, inputs)
        loss = -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean()
        return (loss, {"scores": scores}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            scores = self.scores(model, inputs)
        loss = -F.logsigmoid(scores[:, 0] - scores[:, 1]).mean().detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, scores, torch.zeros(len(scores), device=scores.device)


class RewardMetrics:
    """Pairwise accuracy (the share of pairs whose chosen conversation scores higher), mean margin and scores."""

    preprocess_logits_for_metrics = None

    def names(self) -> list[str]:
        return list(REWARD_METRICS)

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        chosen, rejected = eval_pred.predictions[:, 0], eval_pred.predictions[:, 1]
        return {"accuracy": float((chosen > rejected).mean()), "margin": float((chosen - rejected).mean()),
                "score/chosen": float(chosen.mean()), "score/rejected": float(rejected.mean())}
