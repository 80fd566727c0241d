"""Preference data (task.type: preference): (prompt, chosen, rejected) rows -> prompt_ids, chosen_ids, rejected_ids.

Three row layouts are accepted (detected from the columns and the first row):

- ``strings``: ``prompt``, ``chosen`` and ``rejected`` as text; the prompt is the user's message, each answer the
  assistant's;
- ``conversational``: ``chosen`` / ``rejected`` as lists of {role, content} messages, with ``prompt`` as messages
  (or text: one user message), or without a prompt column: the prompt is then the turns both sides share, up to
  the last assistant turn;
- ``dialogue``: no prompt column, ``chosen`` / ``rejected`` as "Human: ... Assistant: ..." text (Anthropic HH
  style), read as messages and split like conversational rows without a prompt;
- ``unpaired`` (KTO): ``prompt``, ``completion`` (text or messages) and a true / false ``label`` (desirable or
  not) -> prompt_ids, completion_ids, label; only preference.method kto learns from these, and kto only from these.

Each side is rendered and masked by SFT's code (data/sft.py ``encode_conversation``: the tokenizer's chat template,
or llmkit's plain template for text rows when the tokenizer has none), with only the last assistant turn labelled.
The prompt is what both sides share up to where that turn starts; the completion is the rest (the answer, its
end-of-turn marker, EOS). Pairs whose answers are identical, or empty, are dropped and counted; pairs longer than
data.max_length lose the start of their prompt first (then the end of the answers), and are counted.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmkit.data.cache import cached_dataset, files_digest, tokenizer_digest
from llmkit.data.classification import PreparedData
from llmkit.data.columns import column_values, list_lengths
from llmkit.data.loading import SPLIT_KEYS, load_raw_splits
from llmkit.data.sft import IGNORE_INDEX, PLAIN_TEMPLATE, choose_template, encode_conversation, to_messages
from llmkit.errors import UserError

FORMATS = ("strings", "conversational", "dialogue", "unpaired")
KEPT, IDENTICAL, EMPTY = "kept", "identical", "empty"
TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
ROLE_OF = {"Human": "user", "Assistant": "assistant"}
NO_LIMIT = 1 << 30


@dataclass
class PreferenceData(PreparedData):
    """Tokenized pairs (prompt_ids, chosen_ids, rejected_ids) and their counts per split."""

    format: str = "strings"
    sft_format: str = "prompt_response"  # the SFT layout whose template rule applies (plain template or not)


def detect_preference_format(ds: Any, split: str, unpaired: bool = False) -> str:
    """The layout of a split's rows (see the module docstring); missing columns are refused by name, and the
    layout must be the method's: unpaired rows for kto (`unpaired`), pairs for every other method."""
    cols = set(ds.column_names)
    if {"completion", "label"} <= cols and not {"chosen", "rejected"} & cols:
        if not unpaired:
            raise UserError(f"data: the {split} data has unpaired rows (prompt, completion, label: KTO data); "
                            "preference.method dpo, ipo, simpo and orpo learn from pairs, a chosen and a rejected "
                            "answer to each prompt (columns prompt, chosen, rejected). Set preference.method: kto "
                            "for these rows, or give pairs.")
        return "unpaired"
    if unpaired:
        raise UserError(f"data: preference.method kto learns from unpaired rows (columns prompt, completion and a "
                        f"true / false label); the {split} data has the columns {', '.join(ds.column_names)}. Use "
                        "preference.method dpo (or ipo, simpo, orpo) for chosen / rejected pairs, or give KTO rows "
                        "(each pair makes two: its chosen answer labelled true, its rejected answer false).")
    missing = [c for c in ("chosen", "rejected") if c not in cols]
    if missing:
        raise UserError(f"data: preference pairs need the columns prompt, chosen and rejected; the {split} data "
                        f"lacks {' and '.join(missing)} (its columns: {', '.join(ds.column_names)}). Rename "
                        "columns with data.column_map, e.g. {\"response_a\": \"chosen\"}.")
    first = ds[0]
    if isinstance(first["chosen"], (list, tuple)):
        return "conversational"
    return "strings" if "prompt" in cols else "dialogue"


def parse_dialogue(text: str, where: str) -> list[dict]:
    """"Human: ... Assistant: ..." text as messages."""
    text = text.strip()
    marks = list(TURN.finditer(text))
    if not marks or marks[0].start() != 0:
        raise UserError(f"data: {where} has no prompt column and its text is not a Human: / Assistant: dialogue; "
                        "give a prompt column (prompt, chosen, rejected) or chosen / rejected as message lists.")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [{"role": ROLE_OF[m.group(1)], "content": text[m.end():end].strip()} for m, end in zip(marks, ends)]


def split_shared(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen, rejected) of two whole conversations: the shared turns up to the last assistant turn."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    last = [max((i for i, m in enumerate(side) if m["role"] == "assistant"), default=0) for side in (chosen, rejected)]
    cut = min(shared, *last)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _as_turns(value: Any, role: str) -> list[dict]:
    if isinstance(value, (list, tuple)):
        return list(value)
    return [{"role": role, "content": "" if value is None else str(value)}]


def to_pair(row: dict, fmt: str, index: int) -> tuple[list[dict], list[dict], list[dict]]:
    """The (prompt, chosen, rejected) messages of one row, checked like SFT's message rows."""
    where = f"row {index}"
    if fmt == "strings":
        return (_as_turns(row.get("prompt"), "user"), _as_turns(row.get("chosen"), "assistant"),
                _as_turns(row.get("rejected"), "assistant"))
    if fmt == "dialogue":
        return split_shared(parse_dialogue(str(row.get("chosen") or ""), where),
                            parse_dialogue(str(row.get("rejected") or ""), where))
    sides = []
    for key in ("chosen", "rejected"):
        turns = row.get(key)
        if not isinstance(turns, (list, tuple)):
            raise UserError(f"data: {where}: {key} must be a list of messages like the first row's, got "
                            f"{type(turns).__name__}.")
        prompt = _as_turns(row["prompt"], "user") if row.get("prompt") is not None else []
        whole = to_messages({"messages": prompt + list(turns)}, "messages", index)  # SFT's checks of the turns
        sides.append((whole[:len(prompt)], whole[len(prompt):]))
    if row.get("prompt") is None:
        return split_shared(sides[0][0] + sides[0][1], sides[1][0] + sides[1][1])
    return sides[0][0], sides[0][1], sides[1][1]


def _first_label(labels: list[int]) -> int:
    return next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))


def encode_pair(tokenizer: Any, prompt: list[dict], chosen: list[dict], rejected: list[dict],
                template: str | None) -> tuple[list[int], list[int], list[int]]:
    """prompt_ids, chosen_ids, rejected_ids: each side rendered and masked by SFT's encode_conversation (only its
    last assistant turn labelled); the prompt is the tokens both share before either's labels start."""
    sides = [encode_conversation(tokenizer, prompt + turns, NO_LIMIT, template, last_turn_only=True)
             for turns in (chosen, rejected)]
    a, b = sides[0]["input_ids"], sides[1]["input_ids"]
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    n = min(shared, *(_first_label(s["labels"]) for s in sides))
    return a[:n], a[n:], b[n:]


def truncate_pair(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int
                  ) -> tuple[list[int], list[int], list[int], bool]:
    """Prompt first: its start goes until the longer answer fits (the prompt keeps at least half of max_length
    when it has that many tokens); answers still too long lose their end."""
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected, False
    keep = max(max_length - longest, min(len(prompt), max_length // 2))
    room = max_length - keep
    return prompt[len(prompt) - keep:], chosen[:room], rejected[:room], True


def _is_empty(turns: list[dict]) -> bool:
    return not any(str(t.get("content") or "").strip() for t in turns if t.get("role") == "assistant")


def pair_encoder(tokenizer: Any, fmt: str, template: str | None, max_length: int):
    """The `datasets.map` function of a split: one row -> ids, status (kept / identical / empty), truncated."""
    def encode(row: dict, index: int) -> dict:
        prompt, chosen, rejected = to_pair(row, fmt, index)
        status, ids, truncated = KEPT, ([], [], []), False
        if _is_empty(chosen) or _is_empty(rejected):
            status = EMPTY
        else:
            ids = encode_pair(tokenizer, prompt, chosen, rejected, template)
            *ids, truncated = truncate_pair(*ids, max_length)
            status = IDENTICAL if ids[1] == ids[2] else KEPT
        return {"prompt_ids": ids[0], "chosen_ids": ids[1], "rejected_ids": ids[2], "status": status,
                "truncated": truncated}

    return encode


def read_label(value: Any, index: int) -> bool:
    """A KTO row's label: true (desirable) or false; 1 / 0 and the strings true / false are read as such."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"data: row {index}: label must be true (a desirable completion) or false, got {value!r}.")


def unpaired_encoder(tokenizer: Any, template: str | None, max_length: int):
    """The `datasets.map` function of unpaired (KTO) rows: prompt + completion rendered and masked like SFT (the
    prompt is what precedes the completion's labels), truncated prompt first; empty completions marked."""
    def encode(row: dict, index: int) -> dict:
        prompt = _as_turns(row.get("prompt"), "user") if row.get("prompt") is not None else []
        completion = _as_turns(row.get("completion"), "assistant")
        label = read_label(row.get("label"), index)
        if _is_empty(completion):
            return {"prompt_ids": [], "completion_ids": [], "label": label, "status": EMPTY, "truncated": False}
        whole = to_messages({"messages": prompt + completion}, "messages", index)  # SFT's checks of the turns
        side = encode_conversation(tokenizer, whole, NO_LIMIT, template, last_turn_only=True)
        cut = _first_label(side["labels"])
        ids, done, _, truncated = truncate_pair(side["input_ids"][:cut], side["input_ids"][cut:], [], max_length)
        return {"prompt_ids": ids, "completion_ids": done, "label": label, "status": KEPT, "truncated": truncated}

    return encode


def _split_stats(ds: Any, extra: dict) -> dict:
    if "completion_ids" in ds.column_names:  # unpaired rows
        rows = list_lengths(ds, "prompt_ids") + list_lengths(ds, "completion_ids")
        desirable = sum(column_values(ds, "label"))
        return {"examples": len(ds), "tokens": int(rows.sum()), "max_tokens": int(rows.max(initial=0)),
                "desirable": int(desirable), "undesirable": len(ds) - int(desirable), **extra}
    p, c, r = (list_lengths(ds, name) for name in ("prompt_ids", "chosen_ids", "rejected_ids"))
    return {"examples": len(ds), "tokens": int((2 * p + c + r).sum()),
            "max_tokens": int((p + np.maximum(c, r)).max(initial=0)), **extra}


def _check_one_layout(raw: dict, unpaired: bool) -> str:
    first = "train" if "train" in raw else next(iter(raw))
    fmt = detect_preference_format(raw[first], first, unpaired)
    for name, ds in raw.items():
        other = detect_preference_format(ds, name, unpaired)
        if other != fmt:
            raise UserError(f"data.{SPLIT_KEYS[name]}: the {name} data is laid out as {other} pairs but the {first} "
                            f"data as {fmt}; use one layout.")
    return fmt


def _sft_format(raw: dict, fmt: str) -> str:
    """The SFT layout whose template rule applies: message rows keep the tokenizer's template rule, text rows may
    take llmkit's plain template."""
    if fmt == "unpaired":
        first = next(iter(raw.values()))
        return "messages" if len(first) and isinstance(first[0]["completion"], (list, tuple)) else "prompt_response"
    return "messages" if fmt == "conversational" else "prompt_response"


def prepare_preference_data(cfg: Any, tokenizer: Any, seed: int, unpaired: bool = False) -> PreferenceData:
    """Load, render and tokenize preference pairs (or, `unpaired`, KTO's labelled completions), or take them from
    the cache; drop identical and empty pairs, truncate long ones (each counted per split)."""
    start = time.perf_counter()

    def build():
        import datasets

        raw = load_raw_splits(cfg, seed)
        fmt = _check_one_layout(raw, unpaired)
        sft_format = _sft_format(raw, fmt)
        template = choose_template(tokenizer, sft_format)
        encode = unpaired_encoder(tokenizer, template, cfg.max_length) if unpaired else \
            pair_encoder(tokenizer, fmt, template, cfg.max_length)
        splits, stats = {}, {}
        for name, ds in raw.items():
            mapped = ds.map(encode, with_indices=True, remove_columns=ds.column_names,
                            num_proc=cfg.preprocessing_num_workers, desc=f"tokenizing {name} pairs")
            status = mapped["status"]
            counts = {key: status.count(key) for key in (IDENTICAL, EMPTY)}
            truncated = sum(t for t, s in zip(mapped["truncated"], status) if s == KEPT)
            kept = mapped.select([i for i, s in enumerate(status) if s == KEPT]).remove_columns(["status", "truncated"])
            if name == "train" and len(kept) == 0:
                raise UserError(f"data: none of the {len(ds)} training pairs is usable ({counts[IDENTICAL]} identical, "
                                f"{counts[EMPTY]} with an empty answer); check the chosen and rejected columns.")
            splits[name] = kept
            stats[name] = _split_stats(kept, {"truncated": int(truncated), "dropped_identical": counts[IDENTICAL],
                                              "dropped_empty": counts[EMPTY], "format": fmt})
        return datasets.DatasetDict(splits), {"label_names": [], "stats": stats, "format": fmt,
                                              "sft_format": sft_format}

    parts = {
        "kind": "preference", "seed": seed, "unpaired": unpaired,
        "files": {key: files_digest(getattr(cfg, key)) for key in SPLIT_KEYS.values()},
        "hub": [cfg.dataset_name, cfg.dataset_config, cfg.train_split, cfg.eval_split, cfg.test_split],
        "tokenizer": tokenizer_digest(tokenizer), "plain_template": PLAIN_TEMPLATE,
        "settings": {k: getattr(cfg, k) for k in ("format", "column_names", "column_map", "validation_split",
                                                  "max_train_samples", "max_eval_samples", "max_length")},
    }
    cacheable = cfg.cache and cfg.dataset_name is None
    splits, meta, hit = cached_dataset(cacheable, cfg.cache_dir, parts, build)
    return PreferenceData(splits=splits, label_names=[], from_cache=hit, seconds=time.perf_counter() - start,
                          stats=meta["stats"], format=meta["format"], sft_format=meta["sft_format"])
