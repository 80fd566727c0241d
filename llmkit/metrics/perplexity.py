"""Perplexity of causal and masked language models, computed from logits.

Causal models are scored with the sliding-window scheme of the Hugging Face guide
"Perplexity of fixed-length models": windows of at most `max_length` tokens start
every `stride` tokens, and each window scores only the tokens no earlier window
scored, so every token but the first is scored exactly once, with at least
`max_length - stride` tokens of context once the first window is passed.

Masked models get a pseudo-perplexity: a fixed-seed share of the non-special
tokens of each block is replaced by the mask token and the model's negative
log-likelihood of the original tokens at those positions is summed.

The negative log-likelihood is always summed here (float32 cross-entropy with
`reduction="sum"`), never recovered from a model's mean loss, which would be off
by one token per window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label value that excludes a position from the negative log-likelihood."""

Window = tuple[int, int, int]
"""A scoring window: (begin, end, n_new), tokens `[begin, end)`, the last `n_new` of them scored."""


@dataclass
class PerplexityResult:
    """Summed negative log-likelihood (natural log) over the tokens that were scored.

    Attributes:
        tokens_scored: Number of tokens whose negative log-likelihood was summed.
        nll_sum: Sum of the negative log-likelihoods, in nats.
    """

    tokens_scored: int
    nll_sum: float

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per scored token, in nats (NaN when nothing was scored)."""
        if self.tokens_scored == 0:
            return math.nan
        return self.nll_sum / self.tokens_scored

    @property
    def perplexity(self) -> float:
        """`exp(mean_nll)`."""
        return math.exp(self.mean_nll)

    def bits_per_byte(self, n_bytes: int) -> float:
        """Total negative log-likelihood in bits divided by the size of the scored text.

        Args:
            n_bytes: Length of the scored text in bytes (e.g. `len(text.encode("utf-8"))`).

        Returns:
            `nll_sum / ln(2) / n_bytes`.

        Raises:
            ValueError: If `n_bytes` is not positive.
        """
        if n_bytes <= 0:
            raise ValueError(f"n_bytes must be positive, got {n_bytes}")
        return self.nll_sum / math.log(2) / n_bytes

    def as_dict(self, prefix: str = "", n_bytes: int | None = None) -> dict[str, float]:
        """The result as metric entries.

        Args:
            prefix: Prepended to every key (e.g. `"eval_"`).
            n_bytes: Size of the scored text in bytes; adds `bits_per_byte` when given.

        Returns:
            `{prefix}tokens_scored`, `{prefix}nll` (the mean), `{prefix}perplexity`
            and, when `n_bytes` is given, `{prefix}bits_per_byte`.
        """
        out = {
            f"{prefix}tokens_scored": self.tokens_scored,
            f"{prefix}nll": self.mean_nll,
            f"{prefix}perplexity": self.perplexity,
        }
        if n_bytes is not None:
            out[f"{prefix}bits_per_byte"] = self.bits_per_byte(n_bytes)
        return out


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[Window]:
    """The windows of the standard fixed-length-model perplexity scheme.

    Windows `[begin, end)` start at `0, stride, 2 * stride, ...` with
    `end = min(begin + max_length, n_tokens)`; the scheme stops once a window
    reaches `n_tokens`. Each window scores only its new tokens, the last `n_new`
    positions, which no earlier window scored. The very first token has no
    context and is never scored, so the `n_new` sum to `n_tokens - 1`.

    Args:
        n_tokens: Length of the token sequence.
        max_length: Largest window (the model's context length).
        stride: Step between window starts; `1 <= stride <= max_length`.

    Returns:
        `(begin, end, n_new)` per window; empty when fewer than two tokens.

    Raises:
        ValueError: If `max_length` or `stride` is below 1 or `stride > max_length`.
    """
    if max_length < 1 or stride < 1:
        raise ValueError(f"max_length and stride must be >= 1, got max_length={max_length}, stride={stride}")
    if stride > max_length:
        raise ValueError(f"stride ({stride}) must not exceed max_length ({max_length}): tokens would be skipped")
    windows: list[Window] = []
    if n_tokens < 2:
        return windows
    scored_until = 1  # position 0 can never be scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, end - scored_until))
        scored_until = end
        if end == n_tokens:
            break
    return windows


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and `torch.inference_mode()` for the block; the model's previous mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _resolve_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """Move the model to `device` when one is given; otherwise use the device the model is on."""
    if device is None:
        return next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    return device


def _nll_sum(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[float, int]:
    """Summed float32 cross-entropy over positions whose label is not `IGNORE_INDEX`.

    Args:
        logits: `(batch, length, vocab)` model outputs.
        labels: `(batch, length)` target ids, `IGNORE_INDEX` where not scored.
        shift: Causal LM: the logits at position `i` predict the label at `i + 1`.

    Returns:
        The summed negative log-likelihood and the number of positions scored.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    labels = labels.reshape(-1)
    nll = F.cross_entropy(logits.reshape(labels.numel(), -1).float(), labels, ignore_index=IGNORE_INDEX,
                          reduction="sum")
    return nll.item(), int((labels != IGNORE_INDEX).sum().item())


def _batches_by_length(windows: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    """Windows of identical length grouped into batches of at most `batch_size` (no padding needed)."""
    by_length: dict[int, list[Window]] = {}
    for window in windows:
        by_length.setdefault(window[1] - window[0], []).append(window)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def _causal_batch(ids: torch.Tensor, batch: Sequence[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked window inputs and labels that keep only each window's new tokens."""
    inputs = torch.stack([ids[begin:end] for begin, end, _ in batch])
    labels = torch.full_like(inputs, IGNORE_INDEX)
    for row, (_, _, n_new) in enumerate(batch):
        if n_new:
            labels[row, -n_new:] = inputs[row, -n_new:]
    return inputs, labels


def causal_lm_perplexity(model: torch.nn.Module, input_ids: Sequence[int], max_length: int, stride: int,
                         batch_size: int = 8, device: str | torch.device | None = None) -> PerplexityResult:
    """Sliding-window perplexity of a causal language model over one token sequence.

    The windows come from `sliding_windows`; windows of the same length are
    stacked into batches (only the last window can be shorter), so no padding
    is involved. Each window's labels keep only its new tokens.

    Args:
        model: A causal LM returning `.logits` (e.g. `LlamaForCausalLM`); run in
            eval mode (its previous mode is restored afterwards).
        input_ids: The whole token sequence (a 1-D list or tensor).
        max_length: Window length, at most the model's context length.
        stride: Step between windows; smaller strides give each token more context.
        batch_size: Windows per forward pass.
        device: Where to run; the model is moved there when given, else the model's device is used.

    Returns:
        The summed negative log-likelihood over the `len(input_ids) - 1` predicted tokens.

    Raises:
        ValueError: For fewer than two tokens, a non-1-D input, `batch_size < 1`
            or an invalid `max_length` / `stride`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be one 1-D sequence, got shape {tuple(ids.shape)}")
    windows = sliding_windows(len(ids), max_length, stride)
    if not windows:
        raise ValueError("perplexity needs at least two tokens")
    device = _resolve_device(model, device)
    nll_total, scored = 0.0, 0
    with _evaluating(model):
        for batch in _batches_by_length(windows, batch_size):
            inputs, labels = _causal_batch(ids, batch)
            logits = model(input_ids=inputs.to(device), use_cache=False).logits
            nll, count = _nll_sum(logits, labels.to(device), shift=True)
            nll_total += nll
            scored += count
    return PerplexityResult(tokens_scored=scored, nll_sum=nll_total)


def choose_mask_positions(block: Sequence[int], special_mask: Sequence[int], probability: float,
                          generator: torch.Generator) -> list[int]:
    """Positions of a block to mask for evaluation, never special tokens.

    Exactly `round(probability * n)` of the `n` non-special positions are drawn
    without replacement (at least one when `n > 0`).

    Args:
        block: Token ids of the block.
        special_mask: 1 for special tokens ([CLS], [SEP], padding, ...), 0 otherwise; same length as `block`.
        probability: Share of the non-special tokens to choose, in `(0, 1]`.
        generator: Random source, so the choice is reproducible.

    Returns:
        The chosen positions in increasing order (empty when every token is special).

    Raises:
        ValueError: If the lengths differ or `probability` is outside `(0, 1]`.
    """
    if len(special_mask) != len(block):
        raise ValueError(f"special_mask has {len(special_mask)} entries for a block of {len(block)} tokens")
    if not 0 < probability <= 1:
        raise ValueError(f"probability must be in (0, 1], got {probability}")
    candidates = [pos for pos, special in enumerate(special_mask) if not special]
    if not candidates:
        return []
    k = max(1, round(probability * len(candidates)))
    picked = torch.randperm(len(candidates), generator=generator)[:k].tolist()
    return sorted(candidates[i] for i in picked)


def _masked_example(block: Sequence[int], positions: Sequence[int], mask_token_id: int) -> tuple[list[int], list[int]]:
    """The block with every chosen position masked, and labels holding the original ids only there."""
    inputs, labels = list(block), [IGNORE_INDEX] * len(block)
    for pos in positions:
        inputs[pos], labels[pos] = mask_token_id, block[pos]
    return inputs, labels


def _pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Rows padded on the right with `value` to the longest row."""
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def _masked_batch(examples: Sequence[tuple[list[int], list[int]]],
                  pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded inputs, attention mask (0 on padding) and labels (`IGNORE_INDEX` on padding)."""
    inputs = _pad_right([ex[0] for ex in examples], pad_token_id)
    labels = _pad_right([ex[1] for ex in examples], IGNORE_INDEX)
    attention = _pad_right([[1] * len(ex[0]) for ex in examples], 0)
    return inputs, attention, labels


def masked_lm_perplexity(model: torch.nn.Module, blocks: Sequence[Sequence[int]],
                         special_tokens_mask_fn: Callable[[list[int]], list[int]], mask_token_id: int,
                         vocab_size: int, mlm_probability: float = 0.15, seed: int = 0, batch_size: int = 16,
                         device: str | torch.device | None = None, pad_token_id: int = 0) -> PerplexityResult:
    """Pseudo-perplexity of a masked language model with a fixed, reproducible masking.

    For block `i`, `choose_mask_positions` draws `mlm_probability` of its
    non-special tokens (at least one) with a `torch.Generator` seeded with
    `seed + i`, so the masking depends neither on the batch size nor on the
    other blocks. For evaluation, ALL chosen positions are replaced by the mask
    token (unlike training's 80 % mask / 10 % random / 10 % unchanged split),
    and the negative log-likelihood of the original tokens is summed over them.

    Args:
        model: A masked LM returning `.logits` (e.g. `BertForMaskedLM`); run in
            eval mode (its previous mode is restored afterwards).
        blocks: Token id sequences, special tokens included (e.g. `[CLS] ... [SEP]`).
        special_tokens_mask_fn: `ids -> list[int]`, 1 for special tokens, e.g.
            `lambda ids: tok.get_special_tokens_mask(ids, already_has_special_tokens=True)`.
        mask_token_id: Id of the mask token.
        vocab_size: Size of the model's output vocabulary (the logits' last dimension).
        mlm_probability: Share of non-special tokens masked per block.
        seed: Base seed of the per-block generators.
        batch_size: Blocks per forward pass; shorter blocks are padded on the right.
        device: Where to run; the model is moved there when given, else the model's device is used.
        pad_token_id: Id used for padding (masked out by the attention mask).

    Returns:
        The summed negative log-likelihood over all chosen positions.

    Raises:
        ValueError: If `batch_size < 1` or `mlm_probability` is outside `(0, 1]`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = []
    for index, block in enumerate(blocks):
        block = [int(t) for t in block]
        generator = torch.Generator().manual_seed(seed + index)
        positions = choose_mask_positions(block, special_tokens_mask_fn(block), mlm_probability, generator)
        if positions:  # blocks with nothing to score cost no forward pass
            examples.append(_masked_example(block, positions, mask_token_id))
    device = _resolve_device(model, device)
    nll_total, scored = 0.0, 0
    with _evaluating(model):
        for start in range(0, len(examples), batch_size):
            inputs, attention, labels = _masked_batch(examples[start:start + batch_size], pad_token_id)
            logits = model(input_ids=inputs.to(device), attention_mask=attention.to(device)).logits
            nll, count = _nll_sum(logits.reshape(*labels.shape, vocab_size), labels.to(device), shift=False)
            nll_total += nll
            scored += count
    return PerplexityResult(tokens_scored=scored, nll_sum=nll_total)
