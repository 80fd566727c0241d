"""`tokenizer.train`: train a new tokenizer (bpe, wordpiece or unigram) on the training text, cached on disk.

The `tokenizers` library does the training; the result is wrapped in a
`transformers.PreTrainedTokenizerFast` with the special tokens set by role, so
it saves, reloads (`AutoTokenizer.from_pretrained`) and batches like any
other tokenizer. Trained tokenizers are kept under
`$LLMKIT_CACHE/tokenizers/<key>` so a rerun on the same data skips training.
Heavy imports stay inside functions: the config layer imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from llmkit.data.cache import cache_key, cache_root
from llmkit.errors import UserError

OBJECTIVES = ("clm", "mlm")
BYTE_ALPHABET_SIZE = 256  # byte-level BPE starts from every byte
META_FILE = "llmkit_tokenizer_meta.json"
REQUIRED_ROLES = {"clm": ("eos",), "mlm": ("cls", "sep", "mask")}
EXAMPLE_TOKENS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "<|endoftext|>", "cls": "[CLS]",
                  "sep": "[SEP]", "mask": "[MASK]"}
KEY = "tokenizer.train"


SPECIAL_ROLES = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")  # the roles tokenizer.train.special_tokens names


def default_special_tokens(spec, objective: str) -> dict[str, str]:
    """Role -> token, in SPECIAL_ROLES order: `spec.special_tokens` when given (validated), else the defaults.

    clm: eos `<|endoftext|>` and pad `<pad>` (+ unk `<unk>` for wordpiece/unigram; byte-level BPE needs none);
    mlm: BERT's [PAD] [UNK] [CLS] [SEP] [MASK].
    """
    _check_objective(objective)
    if spec.special_tokens:
        tokens = dict(spec.special_tokens)
        _check_given_tokens(spec.type, tokens, objective)
    elif objective == "mlm":
        tokens = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    else:
        tokens = {"eos": "<|endoftext|>", "pad": "<pad>"}
        if spec.type != "bpe":
            tokens["unk"] = "<unk>"
    return {role: tokens[role] for role in SPECIAL_ROLES if role in tokens}


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _check_given_tokens(kind: str, tokens: dict[str, str], objective: str) -> None:
    """User-given special tokens: known roles, non-empty strings, and every role the objective and model need."""
    key = f"{KEY}.special_tokens"
    unknown = sorted(set(tokens) - set(SPECIAL_ROLES))
    if unknown:
        raise UserError(f"{key}: unknown role(s) {', '.join(unknown)}; roles are: {', '.join(SPECIAL_ROLES)}.")
    for role, token in tokens.items():
        if not isinstance(token, str) or not token:
            raise UserError(f"{key}.{role}: {token!r} is not a token; give a non-empty string "
                            f"(e.g. {EXAMPLE_TOKENS[role]!r}).")
    needed = [("pad", "batching needs a padding token")]
    needed += [(role, f"objective {objective} needs it") for role in REQUIRED_ROLES[objective]]
    if kind in ("wordpiece", "unigram"):
        needed.append(("unk", f"{kind} maps text outside its vocabulary to it"))
    for role, why in needed:
        if role not in tokens:
            raise UserError(f"{key}: no {role} token ({why}); got roles {', '.join(tokens)}. Add one, "
                            f"e.g. {role}: {EXAMPLE_TOKENS[role]!r}.")


def _check_vocab_size(spec, specials: list[str]) -> None:
    """The vocabulary must hold the special tokens (and for byte-level BPE the 256 bytes) plus learned tokens."""
    key = f"{KEY}.vocab_size"
    if spec.vocab_size <= len(specials):
        raise UserError(f"{key}: {spec.vocab_size} is not larger than the {len(specials)} special tokens "
                        f"({', '.join(specials)}); raise it (e.g. 8000).")
    minimum = BYTE_ALPHABET_SIZE + len(specials)
    if spec.type == "bpe" and spec.vocab_size < minimum:
        raise UserError(f"{key}: {spec.vocab_size} is too small for byte-level bpe: the {BYTE_ALPHABET_SIZE} byte "
                        f"tokens plus {len(specials)} special tokens need at least {minimum}; raise it (e.g. 8000).")


def _unique(tokens: Iterable[str]) -> list[str]:
    """Tokens in order without repeats (roles may share a token, e.g. bos == eos)."""
    return list(dict.fromkeys(tokens))


def _build(spec, specials: list[str], roles: dict[str, str]):
    """An untrained `tokenizers.Tokenizer` and its trainer for spec.type."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    # Progress bars only for a person watching; they would clutter logs and captured output.
    common = {"vocab_size": spec.vocab_size, "special_tokens": specials, "show_progress": sys.stderr.isatty()}
    if spec.type == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(min_frequency=spec.min_frequency,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common)
    elif spec.type == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=roles["unk"]))
        # strip_accents follows lowercase (BERT uncased strips them, cased keeps them).
        tok.normalizer = normalizers.BertNormalizer(lowercase=spec.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(min_frequency=spec.min_frequency, **common)
    elif spec.type == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(unk_token=roles["unk"], **common)
    else:
        raise UserError(f"{KEY}.type: {spec.type!r} is not a tokenizer type; use bpe, wordpiece or unigram.")
    if spec.lowercase and spec.type != "wordpiece":
        tok.normalizer = normalizers.Lowercase()
    return tok, trainer


class _Batches:
    """Iterate texts() as batches without empty strings, noting whether any text was seen."""

    def __init__(self, texts: Callable[[], Iterable[list[str]]]):
        self.texts = texts
        self.seen = False

    def __iter__(self) -> Iterator[list[str]]:
        for batch in self.texts():
            batch = [t for t in ([batch] if isinstance(batch, str) else batch) if isinstance(t, str) and t.strip()]
            if batch:
                self.seen = True
                yield batch


def _add_mlm_template(tok, roles: dict[str, str]) -> None:
    """BERT-style [CLS] A [SEP] (B [SEP]) so fine-tuning later gets the inputs the model was pretrained on."""
    from tokenizers import processors

    cls, sep = roles["cls"], roles["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])


def train_tokenizer(spec, texts: Callable[[], Iterable[list[str]]], objective: str):
    """Train a tokenizer per `spec` on batches of texts and return it as a `PreTrainedTokenizerFast`.

    `texts()` returns a fresh iterator of lists of strings. Special tokens get the first ids (order pad, unk,
    bos, eos, cls, sep, mask) and are set by role; model_max_length is spec.max_length when set. mlm tokenizers
    wrap inputs in cls/sep; clm tokenizers add nothing (callers append eos). On tiny corpora the vocabulary may
    come out smaller than vocab_size.
    """
    from transformers import PreTrainedTokenizerFast

    roles = default_special_tokens(spec, objective)
    specials = _unique(roles.values())
    _check_vocab_size(spec, specials)
    tok, trainer = _build(spec, specials, roles)
    batches = _Batches(texts)
    tok.train_from_iterator(batches, trainer)
    if not batches.seen:
        raise UserError("data.train_file: no text to train the tokenizer on (every example is empty); check the "
                        "file and data.text_column.")
    extra = {"model_max_length": spec.max_length} if spec.max_length else {}
    if objective == "mlm":
        _add_mlm_template(tok, roles)
        # BERT's tokenizer returns segment ids; the plain wrapper would drop them and pair inputs lose $B:1.
        extra["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, **{f"{role}_token": t for role, t in roles.items()},
                                   **extra)


def tokenizer_cache_dir(cache_dir: str | None = None):
    """`<cache root>/tokenizers`, beside the data cache."""
    return cache_root(cache_dir).parent / "tokenizers"


def cached_tokenizer(spec, texts: Callable[[], Iterable[list[str]]], objective: str, key_parts: dict,
                     cache_dir: str | None = None) -> tuple[Any, bool]:
    """`(tokenizer, from_cache)`: trained once per (key_parts, spec, objective), then loaded from the cache."""
    from transformers import AutoTokenizer

    parts = {"kind": "tokenizer", "spec": dataclasses.asdict(spec), "objective": objective, "parts": key_parts}
    target = tokenizer_cache_dir(cache_dir) / cache_key(parts)
    if (target / META_FILE).is_file():
        return AutoTokenizer.from_pretrained(str(target)), True
    tok = train_tokenizer(spec, texts, objective)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    (tmp / META_FILE).write_text(json.dumps(parts, indent=1, default=str))
    try:
        tmp.rename(target)  # atomic: a concurrent or interrupted run never sees a half-written tokenizer
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same key first
    return tok, False
