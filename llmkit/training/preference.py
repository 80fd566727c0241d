"""Preference tuning (DPO, IPO, SimPO, ORPO, KTO) on llmkit's Trainer.

The batch layout is trl's (`DataCollatorForPreference`: the chosen rows, then the rejected rows, with a
completion mask) and the losses are trl 1.16's `DPOTrainer` losses for `loss_type` sigmoid and ipo
(length-normalised, as trl and the IPO authors do); `label_smoothing` > 0 makes the sigmoid loss conservative
DPO, -(1 - e) log s(b d) - e log s(-b d), the form trl's sigmoid loss had before 1.0. KTO's unpaired rows use
trl's `DataCollatorForUnpairedPreference` and `KTOTrainer`'s loss (loss_type kto): 1 - s(b (r - z)) for a
desirable row, 1 - s(b (z - r)) for an undesirable one, weighted, where r is the row's log-ratio to the
reference and z the KL estimate: the batch's mean log-ratio of mismatched (prompt, another row's completion)
sequences, averaged over processes, clamped at 0, without gradient. The mismatched completions are the batch's
own completions shifted by one row (trl shifts them within each block of the dataset instead, which needs
sequential sampling). The trainer is llmkit's GuardedTrainer rather than trl's DPOTrainer, because DPOTrainer
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
import hashlib
import importlib.util
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import PartialState
from torch import nn

from llmkit.data.cache import cache_error, cache_key, cache_root
from llmkit.data.columns import column_values
from llmkit.errors import UserError
from llmkit.training.trainer import MeanLossTrainer

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected", "logps/accuracies")
KTO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl")
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


class UnpairedCollator:
    """KTO batches: trl's DataCollatorForUnpairedPreference, each row also given the completion of the row before
    it in the batch (the first row the last's) as its mismatched KL completion."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None):
        logging.getLogger("trl").setLevel(logging.ERROR)
        from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

        self.inner = DataCollatorForUnpairedPreference(pad_token_id=pad_token_id,
                                                       pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, rows: list[dict]) -> dict:
        shifted = [rows[-1]["completion_ids"]] + [r["completion_ids"] for r in rows[:-1]]
        return self.inner([{**r, "KL_completion_ids": kl} for r, kl in zip(rows, shifted)])


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


def kto_loss(beta: float, weights: tuple[float, float], logratios: torch.Tensor, kl: torch.Tensor,
             desirable: torch.Tensor) -> torch.Tensor:
    """Per-row KTO loss (trl's loss_type kto): desirable rows 1 - s(b (r - z)) x desirable_weight, undesirable
    rows 1 - s(b (z - r)) x undesirable_weight, for log-ratio r and KL estimate z."""
    good = (1 - torch.sigmoid(beta * (logratios - kl))) * weights[0]
    bad = (1 - torch.sigmoid(beta * (kl - logratios))) * weights[1]
    return torch.where(desirable.bool(), good, bad)


def pair_rows(method: str, beta: float, logps: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor
              ) -> torch.Tensor:
    """Per pair: [chosen reward, rejected reward, chosen logp, rejected logp, and the two mean per-token logps],
    from the chosen-then-rejected rows' completion log-probs, the reference's (ignored by the reference-free
    methods) and the completion lengths. Rewards: beta x the log-ratio to the reference (dpo, ipo), beta x the
    mean per-token log-prob (simpo, orpo), as trl reports them."""
    mean = logps / lengths.clamp(min=1)
    rewards = beta * mean if method in REFERENCE_FREE else beta * (logps - ref)
    return torch.stack([*rewards.chunk(2), *logps.chunk(2), *mean.chunk(2)], dim=-1)


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


def weights_digest(model: Any) -> str:
    """A hash of the weights the reference computes with: the frozen (base) weights under an adapter, else all of
    them (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    adapter = hasattr(model, "disable_adapter")
    for name, p in model.named_parameters():
        if adapter and p.requires_grad:
            continue
        t = p.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(p.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ids_digest(ds: Any) -> str:
    """A hash of a split's token ids, in order (what the reference's log-probs depend on, with the model)."""
    h = hashlib.sha256()
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        for ids in column_values(ds, column):
            h.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()


@dataclass
class RefCache:
    """preference.precompute_ref on disk: each split's reference log-probs in
    <cache>/reference/<key>.json, the key hashing the reference's weights, the split's token ids and the settings
    that change the figures (precision, batch size, padding multiple): a second run reuses them, a changed model,
    data or tokenization misses."""

    enabled: bool = True
    cache_dir: str | None = None
    settings: dict | None = None
    _digest: str | None = None

    def path(self, trainer: Any, ds: Any) -> Path:
        if self._digest is None:
            self._digest = weights_digest(trainer.accelerator.unwrap_model(trainer.model))
        padding = getattr(trainer.data_collator, "pad_to_multiple_of", None)
        key = cache_key({"reference": self._digest, "data": ids_digest(ds), "settings": self.settings,
                         "pad_to_multiple_of": padding})
        return cache_root(self.cache_dir).parent / "reference" / f"{key}.json"

    def columns(self, trainer: Any, ds: Any, name: str) -> Any:
        """The split with ref_chosen_logps / ref_rejected_logps columns: from the cache, else computed (and
        stored by the main process; the others wait for it and read the file)."""
        say = PartialState().print
        path = self.path(trainer, ds) if self.enabled else None
        with trainer.args.main_process_first(desc="reference log-probs"):
            if path is not None and path.is_file():
                saved = json.loads(path.read_text())
                chosen, rejected = saved["chosen"], saved["rejected"]
                say(f"reference log-probs ({name}, {len(chosen)} pairs): reused from the cache {path}")
            else:
                start = time.perf_counter()
                chosen, rejected = trainer.reference_logps(ds)
                where = f", cached in {path}" if path is not None else ""
                say(f"reference log-probs ({name}, {len(chosen)} pairs): computed in "
                    f"{time.perf_counter() - start:.1f} s{where}")
                if path is not None and PartialState().is_main_process:
                    self.store(path, chosen, rejected)
        return ds.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    def store(self, path: Path, chosen: list[float], rejected: list[float]) -> None:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"chosen": chosen, "rejected": rejected}))
            tmp.replace(path)  # atomic: a concurrent or interrupted run never reads half a file
        except OSError as e:  # the cache location failed: name the setting that chose it
            tmp.unlink(missing_ok=True)
            raise cache_error(e, path, self.cache_dir) from None


class PreferenceTrainer(MeanLossTrainer):
    """DPO / IPO against a reference, SimPO / ORPO without one: the loss on the policy's completion log-probs;
    train figures (rewards, accuracies, margins, log-probs) logged with the loss, evaluation figures from
    PreferenceMetrics. Rewards: beta x the log-ratio to the reference (dpo, ipo), beta x the mean per-token
    log-prob (simpo, orpo), as trl reports them."""

    def __init__(self, *args, method: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0,
                 weights: tuple[float, float] = (1.0, 1.0), ref_model: Any = None, precompute: dict | None = None,
                 ref_cache: RefCache | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.method, self.beta, self.label_smoothing, self.gamma = method, beta, label_smoothing, gamma
        self.weights = weights
        no_dropout(self.model)
        self.ref_model = ref_model.to(self.args.device) if ref_model is not None else None
        self._train_rows: list[torch.Tensor] = []
        self._with_ref: dict[str, Any] = {}
        if precompute:  # every split, by name: the reference's log-probs added as columns, once, before training
            cache = ref_cache or RefCache(enabled=False)
            for name, ds in precompute.items():
                self._with_ref[ds._fingerprint] = cache.columns(self, ds, name)
            self.train_dataset = self._swap(self.train_dataset)
            self.eval_dataset = self._swap(self.eval_dataset)

    def _swap(self, ds: Any) -> Any:
        return self._with_ref.get(getattr(ds, "_fingerprint", None), ds)

    def predict(self, test_dataset, *args, **kwargs):
        return super().predict(self._swap(test_dataset), *args, **kwargs)

    def reference_logps(self, ds: Any) -> tuple[list[float], list[float]]:
        """The reference's chosen and rejected log-probs of every pair of a split, from the untrained model (its
        adapter disabled), in batches of per_device_eval_batch_size."""
        size, chosen, rejected = self.args.per_device_eval_batch_size, [], []
        for start in range(0, len(ds), size):
            rows = [ds[i] for i in range(start, min(start + size, len(ds)))]
            batch = {k: v.to(self.args.device) for k, v in self.data_collator(rows).items()}
            c, r = self.reference(self.model, batch).chunk(2)
            chosen += c.tolist()
            rejected += r.tolist()
        return chosen, rejected

    def reference(self, model: Any, inputs: dict, prefix: str = "") -> torch.Tensor:
        """The reference's completion log-probs: the frozen copy, else the model with its adapter disabled
        (`prefix` KL_: of the mismatched KTO sequences)."""
        inputs = {k: inputs[prefix + k] for k in ("input_ids", "attention_mask", "completion_mask")}
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
        """Per-pair loss and figures (pair_rows; kto: kto_rows)."""
        if self.method == "kto":
            return self.kto_figures(model, inputs)
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        logps = completion_logps(logits, inputs["input_ids"], inputs["completion_mask"])
        lengths = inputs["completion_mask"][:, 1:].sum(-1)
        if self.method in REFERENCE_FREE:
            ref = torch.zeros_like(logps)
        elif "ref_chosen_logps" in inputs:  # precomputed
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]]).to(logps)
        else:
            ref = self.reference(model, inputs)
        loss = preference_loss(self.method, self.beta, self.label_smoothing, self.gamma, logps.chunk(2),
                               ref.chunk(2), lengths.chunk(2))
        return loss, pair_rows(self.method, self.beta, logps, ref, lengths).detach()

    def kto_figures(self, model: Any, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row KTO loss, and per row [reward, logp, mean per-token logp, label, the batch's KL estimate]."""
        def policy(prefix: str) -> torch.Tensor:
            logits = model(input_ids=inputs[prefix + "input_ids"], attention_mask=inputs[prefix + "attention_mask"],
                           use_cache=False).logits
            return completion_logps(logits, inputs[prefix + "input_ids"], inputs[prefix + "completion_mask"])

        with torch.no_grad():
            kl = (policy("KL_") - self.reference(model, inputs, "KL_")).mean()
            kl = self.accelerator.gather(kl.reshape(1)).mean().clamp(min=0)
        logps = policy("")
        logratios = logps - self.reference(model, inputs)
        label = inputs["label"].to(logps.device)
        loss = kto_loss(self.beta, self.weights, logratios, kl, label)
        lengths = inputs["completion_mask"][:, 1:].sum(-1).clamp(min=1)
        rows = torch.stack([self.beta * logratios, logps, logps / lengths, label.to(logps.dtype),
                            kl.expand_as(logps)], dim=-1)
        return loss, rows.detach()

    def summarise(self, rows: Any) -> dict[str, Any]:
        return summarise_kto(rows) if self.method == "kto" else summarise(rows)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, figures = self.pair_figures(model, inputs)
        if model.training:
            self._train_rows.append(figures)
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
        if "loss" in logs and self._train_rows:
            figures = self.summarise(torch.cat(self._train_rows).float())
            logs.update({k: round(float(v), 6) for k, v in figures.items()})
            self._train_rows = []
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


def summarise_kto(rows: Any) -> dict[str, Any]:
    """KTO's figures of kto_rows (tensors or arrays), as trl reports them: the mean reward and log-prob of the
    desirable rows (chosen) and of the undesirable ones (rejected), their margin, the mean KL estimate; a side
    without rows is left out."""
    desirable = rows[:, 3] > 0.5
    out = {}
    for side, keep in (("chosen", desirable), ("rejected", ~desirable)):
        if keep.sum() > 0:
            out[f"rewards/{side}"], out[f"logps/{side}"] = rows[keep, 0].mean(), rows[keep, 1].mean()
    if "rewards/chosen" in out and "rewards/rejected" in out:
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"]
    out["kl"] = rows[:, 4].mean()
    return out


class PreferenceMetrics:
    """Evaluation figures over a whole split: mean implicit rewards (beta x the log-ratio to the reference), the
    share of pairs whose chosen reward is higher (rewards/accuracies), the mean margin, the mean log-probs; for
    kto, summarise_kto's figures."""

    preprocess_logits_for_metrics = None

    def __init__(self, method: str = "dpo"):
        self.method = method

    def names(self) -> list[str]:
        return list(KTO_METRICS if self.method == "kto" else METRICS)

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        rows = eval_pred.predictions
        figures = summarise_kto(rows) if self.method == "kto" else summarise(rows)
        return {k: float(v) for k, v in figures.items()}


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


# ---------------------------------------------------------------- `llmkit eval`, eval.task: preference


def _batches(ds: Any, collate: Any, batch_size: int, device: Any):
    for start in range(0, len(ds), batch_size):
        rows = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        yield {k: v.to(device) for k, v in collate(rows).items()}


def score_pairs(model: Any, reference: Any, ds: Any, collate: Any, batch_size: int, precision: str) -> dict:
    """Every pair's completion log-probs by `model` and by its reference (`reference`: "adapter-off" for the
    model with its adapter disabled, a model, or None), and the completion lengths, each [pairs, 2] (chosen,
    rejected), on CPU."""
    device = next(model.parameters()).device
    model.eval()
    out: dict[str, list] = {"logps": [], "ref": [], "lengths": []}

    def logps_of(m: Any, batch: dict) -> torch.Tensor:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        return completion_logps(logits, batch["input_ids"], batch["completion_mask"]).float()

    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for batch in _batches(ds, collate, batch_size, device):
            out["logps"].append(logps_of(model, batch))
            out["lengths"].append(batch["completion_mask"][:, 1:].sum(-1))
            if reference == "adapter-off":
                with model.disable_adapter():
                    out["ref"].append(logps_of(model, batch))
            elif reference is not None:
                out["ref"].append(logps_of(reference, batch))
    return {k: torch.cat([torch.stack(t.chunk(2), dim=-1) for t in parts]).cpu() for k, parts in out.items() if parts}


def score_conversations(model: Any, ds: Any, collate: Any, batch_size: int, precision: str) -> torch.Tensor:
    """A reward model's scores of every pair's chosen and rejected conversation, [pairs, 2], on CPU."""
    device = next(model.parameters()).device
    model.eval()
    scores = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for batch in _batches(ds, collate, batch_size, device):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            scores.append(torch.stack(logits.squeeze(-1).float().chunk(2), dim=-1))
    return torch.cat(scores).cpu()


def log_prob_figures(logps: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
    """The log-probability preference of a causal LM alone: the share of pairs whose chosen answer has the higher
    mean per-token log-prob (accuracy), the mean difference of those means (margin), the mean summed log-probs."""
    mean = logps / lengths.clamp(min=1)
    return {"accuracy": float((mean[:, 0] > mean[:, 1]).float().mean()),
            "margin": float((mean[:, 0] - mean[:, 1]).mean()),
            "chosen": float(logps[:, 0].mean()), "rejected": float(logps[:, 1].mean())}


def reward_figures(rewards: torch.Tensor) -> dict[str, float]:
    """Pairwise figures of [pairs, 2] rewards or scores: accuracy (chosen > rejected), mean margin, means."""
    return {"accuracy": float((rewards[:, 0] > rewards[:, 1]).float().mean()),
            "margin": float((rewards[:, 0] - rewards[:, 1]).mean()),
            "chosen": float(rewards[:, 0].mean()), "rejected": float(rewards[:, 1].mean())}
