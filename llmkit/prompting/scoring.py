"""Verbalizer scores: the log-probability of each class's label words at the mask, for both model kinds.

Masked LMs: the template is rendered with as many mask tokens as the word has tokens, and token i of the
word is scored at mask i. Causal LMs: the prompt up to the mask is the context and the word is its
continuation; token i is scored at the position before it (a word's first i tokens are appended to the
context, so one row per distinct word prefix: single-token words share one row). Causal rows are
left-padded with position ids from the attention mask, so every scored position counts from the end and only
the last few positions' logits are computed (`logits_to_keep`). PEFT prompt tuning and p-tuning prepend
virtual tokens and drop position ids, so with them causal rows are right-padded and scored at their own
positions (left padding would shift GPT-2's absolute positions).

A multi-token word scores the sum or mean of its tokens' log-probabilities (`multi_token`); a class with
several words combines them by the mean (or max, or sum) of their probabilities (`combine`). The class
scores are log-probabilities over the vocabulary, compared across classes by a softmax: training minimises
the cross-entropy of that softmax (LM-BFF, PET), evaluation takes its argmax.

transformers scores a single sequence's tokens but not a verbalizer over a batch of prompts, nor the
mask-position variant for multi-token words; this module is that part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llmkit.training.trainer import MeanLossTrainer


@dataclass
class ScoringPlan:
    """What to score: every label word's token ids, its class, and the row ("variant") it is scored in."""

    kind: str  # "causal" | "masked"
    word_ids: list[list[int]]  # every label word of every class, flattened
    word_class: list[int]
    num_classes: int
    multi_token: str | None = None  # sum | mean (None: every word is one token)
    combine: str = "mean"  # mean | max | sum of the probabilities of a class's words
    virtual_tokens: bool = False  # a PEFT soft prompt is prepended to every row (prompt tuning, p-tuning)
    keys: list[Any] = field(default_factory=list)  # the variants every example is rendered as
    word_key: list[int] = field(default_factory=list)
    class_words: list[list[int]] = field(default_factory=list)  # each class's word positions in word_ids

    def __post_init__(self):
        # causal: a word of n tokens is scored in the row context + its first n-1 tokens; masked: in the row
        # with n masks. Words sharing that key share the row.
        keys = [tuple(ids[:-1]) if self.kind == "causal" else len(ids) for ids in self.word_ids]
        self.keys = list(dict.fromkeys(keys))
        self.word_key = [self.keys.index(k) for k in keys]
        self.class_words = [[w for w, c in enumerate(self.word_class) if c == cls] for cls in range(self.num_classes)]

    @property
    def left_pad(self) -> bool:
        return self.kind == "causal" and not self.virtual_tokens

    @property
    def longest_word(self) -> int:
        return max(len(ids) for ids in self.word_ids)


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The tokens the tokenizer puts before and after any text (BERT's [CLS] and [SEP]; Llama's BOS)."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return with_special[:start], with_special[start + len(plain):]
    return [], []


def encode_variants(plan: ScoringPlan, tokenizer: Any, before: str, after: str,
                    special: tuple[list[int], list[int]]) -> dict:
    """One example as the token rows it is scored in (one per plan key) and where the label word starts in
    each row (causal: the end of the context; masked: the first mask).

    `before`/`after`: the prompt text around the mask. Causal LMs: trailing spaces of `before` belong to the
    label word (its token carries the space), `after` is never scored, and only the leading special tokens
    (BOS) are added. `special`: the tokens around the text (none when a chat template wrote them already).
    """
    prefix, suffix = special
    if plan.kind == "causal":
        context = prefix + tokenizer(before.rstrip(" "), add_special_tokens=False)["input_ids"]
        return {"variants": [context + list(key) for key in plan.keys], "mask_start": [len(context)] * len(plan.keys)}
    head = prefix + tokenizer(before.rstrip(), add_special_tokens=False)["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"] + suffix
    return {"variants": [head + [tokenizer.mask_token_id] * n + tail for n in plan.keys],
            "mask_start": [len(head)] * len(plan.keys)}


class PromptCollator:
    """Pads the rows of a batch and lists which (row, position, token) feeds which example's word score."""

    def __init__(self, plan: ScoringPlan, pad_token_id: int):
        self.plan = plan
        self.pad = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        plan = self.plan
        rows = [row for f in features for row in f["variants"]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            span = slice(width - len(row), width) if plan.left_pad else slice(0, len(row))
            ids[r, span] = torch.tensor(row)
            mask[r, span] = 1
        keys, words = len(plan.keys), len(plan.word_ids)
        row_idx, pos_idx, tokens, slots = [], [], [], []
        for b, f in enumerate(features):
            for w, word in enumerate(plan.word_ids):
                k = plan.word_key[w]
                n = len(word)
                for i, token in enumerate(word):
                    row_idx.append(b * keys + k)
                    # causal: token i is predicted at the position before it (counted from the end when
                    # left-padded); masked: at the i-th mask
                    start = f["mask_start"][k]
                    pos_idx.append((i - n if plan.left_pad else start - 1 + i) if plan.kind == "causal" else start + i)
                    tokens.append(token)
                    slots.append(b * words + w)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "score_rows": torch.tensor(row_idx), "score_positions": torch.tensor(pos_idx),
                 "score_tokens": torch.tensor(tokens), "score_slots": torch.tensor(slots)}
        if plan.left_pad:
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch


SCORE_KEYS = ("score_rows", "score_positions", "score_tokens", "score_slots", "labels")


def class_scores(model: Any, batch: dict, plan: ScoringPlan) -> Any:
    """[examples, classes] float32 log-scores of the verbalizer for a collated batch."""
    import torch

    inputs = {k: v for k, v in batch.items() if k not in SCORE_KEYS}
    if plan.left_pad:
        inputs["logits_to_keep"] = plan.longest_word  # only the positions that are scored
    logits = model(**inputs).logits
    positions = batch["score_positions"]
    if not plan.left_pad:
        positions = positions + (logits.shape[1] - inputs["input_ids"].shape[1])  # soft-prompt tokens come first
    picked = logits[batch["score_rows"], positions].float().log_softmax(-1)
    token_lp = picked.gather(-1, batch["score_tokens"][:, None]).squeeze(-1)
    examples = inputs["input_ids"].shape[0] // len(plan.keys)
    words = len(plan.word_ids)
    word_lp = torch.zeros(examples * words, device=token_lp.device).index_add_(0, batch["score_slots"], token_lp)
    word_lp = word_lp.view(examples, words)
    if plan.multi_token == "mean":
        lengths = torch.tensor([len(w) for w in plan.word_ids], device=word_lp.device, dtype=word_lp.dtype)
        word_lp = word_lp / lengths
    columns = []
    for idx in plan.class_words:
        group = word_lp[:, idx]
        if plan.combine == "max":
            columns.append(group.max(-1).values)
        else:
            score = group.logsumexp(-1)
            columns.append(score - math.log(len(idx)) if plan.combine == "mean" else score)
    return torch.stack(columns, dim=-1)


class PromptTrainer(MeanLossTrainer):
    """Trains and evaluates on verbalizer scores: the loss is the cross-entropy of the class softmax (a mean per
    micro-batch; MeanLossTrainer has the Trainer divide it over gradient accumulation), predictions are the
    class scores."""

    def __init__(self, *args, plan: ScoringPlan, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch.nn.functional as F

        scores = class_scores(model, inputs, self.plan)
        loss = F.cross_entropy(scores, inputs["labels"])
        return (loss, {"logits": scores}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        import torch
        import torch.nn.functional as F

        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            scores = class_scores(model, inputs, self.plan)
        labels = inputs.get("labels")
        loss = F.cross_entropy(scores, labels) if labels is not None else None
        return loss, (None if prediction_loss_only else scores), labels
