"""Text generation with causal LMs and exact-match scoring of the answers they produce.

Generation is batched with left padding (what decoder-only models need so that every
prompt ends right where the new tokens start), sorts prompts by length to cut padding and
returns the outputs in the input order. Sampling is reproducible: the torch RNG is seeded
before every batch.

Scoring extracts an answer from free text (a regex or a preset such as ``gsm8k``),
normalises it (case, surrounding punctuation, ``$``, thousands separators, number format)
and compares it with the reference.

Example:
    >>> settings = GenerationSettings(max_new_tokens=64, stop_strings=["\\n\\n"])
    >>> outputs = generate(model, tokenizer, ["What is 2 + 3?"], settings)  # doctest: +SKIP
    >>> exact_match([extract_answer(o, "gsm8k") for o in outputs], ["5"])  # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import torch

# A number as written in text: optional minus (not a hyphen glued to a word or digit, as in "3-4"),
# digits with optional thousands separators ("1,000"; only well-formed groups) and an optional decimal
# part (a trailing "." as in "$18." is not part of the number), or a bare decimal such as ".5".
NUMBER = r"(?:(?<![\w.])-)?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<!\d)\.\d+)"

#: Named answer patterns usable wherever a regex is accepted. Each has one capturing group.
ANSWER_PRESETS: dict[str, str] = {
    # GSM8K references end with "#### 72"; models sometimes write "#### $1,000".
    "gsm8k": rf"####\s*\$?\s*({NUMBER})",
    # The last number in the text, across newlines: no digit may follow the match.
    "last_number": rf"(?s)({NUMBER})(?!.*\d)",
}

_LAST_NUMBER = re.compile(ANSWER_PRESETS["last_number"])
_LEADING_JUNK = re.compile(r"^(?:[\s$\"'`(\[{*,;:!?]|\.(?!\d))+")
_TRAILING_JUNK = re.compile(r"[\s$\"'`)\]}*.,;:!?]+$")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


@dataclass
class GenerationSettings:
    """How to generate: decoding knobs, stop strings, seed, batch size and chat-template use.

    Attributes:
        max_new_tokens: Maximum number of tokens generated per prompt.
        do_sample: Sample (True) or decode greedily (False).
        temperature: Sampling temperature (only used when ``do_sample``).
        top_k: Top-k filtering (only used when ``do_sample``).
        top_p: Nucleus filtering (only used when ``do_sample``).
        repetition_penalty: Penalty for repeated tokens (1.0 = none).
        stop_strings: Generation stops at any of these; the output is cut before the first one.
        seed: Seed for ``torch.manual_seed`` before every batch (reproducible sampling).
        batch_size: Prompts per ``generate()`` call.
        use_chat_template: Wrap prompts in the tokenizer's chat template: True, False, or None
            (when the tokenizer has one).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_strings: list[str] = field(default_factory=list)
    seed: int = 0
    batch_size: int = 8
    use_chat_template: bool | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        self.stop_strings = [s for s in self.stop_strings if s]

    def to_generation_config(self, tokenizer: Any):
        """Build the ``transformers.GenerationConfig`` for these settings.

        Pad and eos ids come from the tokenizer (pad falls back to eos). The sampling knobs are
        set only when sampling, so greedy decoding does not warn about unused flags.

        Args:
            tokenizer: The tokenizer used for the prompts.

        Returns:
            A ``GenerationConfig``.
        """
        from transformers import GenerationConfig

        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "pad_token_id": _pad_token_id(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.stop_strings:
            kwargs["stop_strings"] = list(self.stop_strings)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return GenerationConfig(**kwargs)


def _pad_token_id(tokenizer: Any) -> int | None:
    """The tokenizer's pad id, or its eos id when it has no pad token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompts(
    tokenizer: Any, prompts: list[str], use_chat_template: bool | None, system: str | None = None
) -> list[str]:
    """Render prompts as the model should see them.

    With a chat template (and ``use_chat_template`` not False) each prompt becomes a single user
    turn (after an optional system message) followed by the generation prompt; otherwise the
    prompts are returned unchanged.

    Args:
        tokenizer: The tokenizer (its ``chat_template`` is used).
        prompts: Raw prompts.
        use_chat_template: True (require a template), False (never) or None (when there is one).
        system: Optional system message put before each prompt.

    Returns:
        The rendered prompt strings, in the input order.

    Raises:
        ValueError: ``use_chat_template`` is True and the tokenizer has no chat template.
    """
    if use_chat_template is False:
        return list(prompts)
    if not has_chat_template(tokenizer):
        if use_chat_template:
            raise ValueError(
                "use_chat_template is true but the tokenizer has no chat template; "
                "set use_chat_template to false (or null) or use a tokenizer with a chat_template"
            )
        return list(prompts)
    return [_render_chat(tokenizer, p, system) for p in prompts]


def _render_chat(tokenizer: Any, prompt: str, system: str | None) -> str:
    """One prompt as a user turn in the chat template, ending with the assistant's generation prompt."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def check_generative(model: Any) -> None:
    """Raise ValueError unless ``model`` can generate text (a causal LM, not e.g. an encoder-only BERT).

    Args:
        model: A transformers (or PEFT-wrapped) model.

    Raises:
        ValueError: The model has no usable ``generate()``.
    """
    can_generate = getattr(model, "can_generate", None)
    if not callable(can_generate) or not can_generate() or not callable(getattr(model, "generate", None)):
        raise ValueError(
            f"{type(model).__name__} cannot generate text: generation needs a causal LM "
            "(e.g. a *ForCausalLM model), not an encoder-only or classification model"
        )


def _contains_special_tokens(tokenizer: Any, text: str) -> bool:
    """Whether ``text`` already contains a special token string (e.g. the bos a chat template wrote)."""
    return any(tok and tok in text for tok in getattr(tokenizer, "all_special_tokens", []))


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text; special tokens are added only to texts that do not already contain some."""
    return [
        tokenizer(text, add_special_tokens=not _contains_special_tokens(tokenizer, text))["input_ids"]
        for text in texts
    ]


def _length_order(encoded: list[list[int]]) -> list[int]:
    """Indices of the prompts, longest first (stable), so that batches hold prompts of similar length."""
    return sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))


def cut_at_stop_strings(text: str, stop_strings: list[str]) -> str:
    """Cut ``text`` before the earliest occurrence of any stop string.

    Args:
        text: Generated text.
        stop_strings: Strings that end the answer.

    Returns:
        The text up to (not including) the first stop string, or the whole text.
    """
    positions = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return text[: min(positions)] if positions else text


def _generate_batch(model: Any, tokenizer: Any, batch: list[list[int]], generation_config: Any, seed: int) -> list[str]:
    """Generate for one batch of (already tokenised) prompts; returns the decoded new text of each."""
    enc = tokenizer.pad({"input_ids": batch}, padding=True, return_tensors="pt", return_attention_mask=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**enc, generation_config=generation_config, tokenizer=tokenizer)
    if not getattr(model.config, "is_encoder_decoder", False):
        out = out[:, enc["input_ids"].shape[1] :]
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def generate(model: Any, tokenizer: Any, prompts: list[str], settings: GenerationSettings) -> list[str]:
    """Generate a completion for every prompt, batched, in the input order.

    Prompts are rendered with the chat template (per ``settings.use_chat_template``), tokenised,
    sorted by length and generated in batches with left padding (the tokenizer's padding side is
    restored afterwards). Only the new tokens are decoded, without special tokens, and each output
    is cut before the first stop string.

    Args:
        model: A causal LM (``model.can_generate()`` must be true).
        tokenizer: Its tokenizer (pad token or eos token required).
        prompts: Raw prompts.
        settings: Decoding settings.

    Returns:
        One generated string per prompt, in the order of ``prompts``.

    Raises:
        ValueError: The model cannot generate, or a chat template is required but missing, or the
            tokenizer has neither a pad nor an eos token.
    """
    check_generative(model)
    if not prompts:
        return []
    if _pad_token_id(tokenizer) is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token; batched generation needs one")
    encoded = _encode(tokenizer, render_prompts(tokenizer, prompts, settings.use_chat_template))
    generation_config = settings.to_generation_config(tokenizer)
    order = _length_order(encoded)
    outputs: list[str] = [""] * len(prompts)
    padding_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            texts = _generate_batch(model, tokenizer, [encoded[i] for i in idx], generation_config, settings.seed)
            for i, text in zip(idx, texts):
                outputs[i] = cut_at_stop_strings(text, settings.stop_strings)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs


# --------------------------------------------------------------------------------------------------
# Answer extraction and exact match
# --------------------------------------------------------------------------------------------------


def _compile(pattern: str) -> re.Pattern:
    """Compile a preset name or a regex, with a clear error for an invalid regex."""
    try:
        return re.compile(ANSWER_PRESETS.get(pattern, pattern))
    except re.error as e:
        raise ValueError(
            f"invalid answer pattern {pattern!r}: {e} (use a regex or one of {sorted(ANSWER_PRESETS)})"
        ) from e


def _match_value(match: re.Match) -> str:
    """The first capturing group that matched, or the whole match for a regex without groups."""
    groups = [g for g in match.groups() if g is not None]
    return groups[0] if groups else match.group(0)


@dataclass
class AnswerExtractor:
    """Extract the answer from a generated (or reference) text.

    Attributes:
        pattern: A preset name (see ``ANSWER_PRESETS``), a regex (its first group is the answer,
            or the whole match without groups), or None (the whole stripped text is the answer).
        fallback_last_number: When the pattern does not match, take the last number in the text
            instead (models rarely write GSM8K's ``####``).
    """

    pattern: str | None
    fallback_last_number: bool = True
    _regex: re.Pattern | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        self._regex = _compile(self.pattern) if self.pattern is not None else None

    def __call__(self, text: str | None) -> str | None:
        """Return the extracted answer, or None when nothing matches.

        Args:
            text: The text to search.

        Returns:
            The answer string (not normalised) or None.
        """
        if text is None:
            return None
        if self._regex is None:
            return text.strip() or None
        match = self._regex.search(text)
        if match is None and self.fallback_last_number:
            match = _LAST_NUMBER.search(text)
        return _match_value(match).strip() if match else None


def extract_answer(text: str, pattern: str | None, fallback_last_number: bool | None = None) -> str | None:
    """Extract an answer from ``text`` with a preset or a regex.

    Args:
        text: Generated or reference text.
        pattern: A preset name (``gsm8k``, ``last_number``), a regex with one group (else the whole
            match is used), or None (the whole stripped text).
        fallback_last_number: Take the last number when the pattern does not match. Default: only
            for the ``gsm8k`` preset.

    Returns:
        The answer string (not normalised), or None when nothing matches.
    """
    if fallback_last_number is None:
        fallback_last_number = pattern == "gsm8k"
    return AnswerExtractor(pattern, fallback_last_number=fallback_last_number)(text)


def _canonical_number(s: str) -> str | None:
    """``s`` as a canonical number ("3.50" -> "3.5", "7.0" -> "7", "-0" -> "0"), or None if it is not one."""
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalize_answer(s: str, numeric: bool = True) -> str:
    """Normalise an answer for comparison.

    Strips whitespace, lowercases, collapses inner whitespace and removes surrounding punctuation,
    quotes, brackets and ``$``. With ``numeric`` also removes thousands separators and writes
    numbers canonically: ``"1,000" -> "1000"``, ``"3.50" -> "3.5"``, ``"7.0" -> "7"``, ``"$18." -> "18"``.

    Args:
        s: The answer.
        numeric: Canonicalise numbers (and drop thousands separators).

    Returns:
        The normalised answer.
    """
    s = " ".join(str(s).split()).lower()
    s = _TRAILING_JUNK.sub("", _LEADING_JUNK.sub("", s))
    if not numeric:
        return s
    s = _THOUSANDS.sub("", s)
    number = _canonical_number(s.replace("$", "").replace(" ", ""))
    return number if number is not None else s


def exact_match(predictions: list[str | None], references: list[str | None], normalize: bool = True) -> float:
    """Fraction of predictions equal to their reference (a None prediction or reference never matches).

    Args:
        predictions: Extracted answers (None when extraction failed).
        references: Reference answers.
        normalize: Compare ``normalize_answer`` forms instead of the raw strings.

    Returns:
        Exact match in [0, 1]; 0.0 for empty lists.

    Raises:
        ValueError: The lists differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return 0.0
    hits = sum(_answers_match(p, r, normalize) for p, r in zip(predictions, references))
    return hits / len(predictions)


def _answers_match(prediction: str | None, reference: str | None, normalize: bool) -> bool:
    """Whether one prediction equals its reference."""
    if prediction is None or reference is None:
        return False
    if normalize:
        return normalize_answer(prediction) == normalize_answer(reference)
    return prediction == reference
