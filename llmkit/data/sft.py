"""Supervised fine-tuning data for causal LMs: chat / instruction / raw-text rows -> input_ids + labels.

Four row layouts are accepted (detected from the columns):

- ``messages``: a list of ``{"role", "content"}`` turns (system / user / assistant), rendered with the
  tokenizer's chat template (or ``tokenizer.chat_template`` from the config);
- ``alpaca``: ``instruction`` (+ optional ``input``) and ``output`` columns;
- ``prompt_response``: ``prompt`` and ``response`` columns;
- ``text``: a ``text`` column for plain continued pretraining (every token carries loss).

For the conversational layouts only assistant tokens carry loss: the labels are -100 on the system and
user turns and on the template's boilerplate, and the assistant's content plus its end-of-turn marker and
the final EOS are labelled, so the model learns to answer and to stop.
"""

from __future__ import annotations

import os
import time
from typing import Any

from llmkit.data.cache import cached_dataset, files_digest, tokenizer_digest
from llmkit.data.classification import PreparedData, token_stats
from llmkit.data.loading import SPLIT_KEYS, load_raw_splits
from llmkit.errors import UserError, first_line

IGNORE_INDEX = -100
FORMATS = ("messages", "alpaca", "prompt_response", "text")
ROLES = ("system", "user", "assistant")
LAYOUTS = ("messages (a list of {role, content} turns); alpaca (instruction, optional input, output); "
           "prompt_response (prompt, response); text (raw text for continued pretraining)")

# Used for instruction data (alpaca / prompt_response) when the tokenizer has no chat template of its own.
PLAIN_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '### Response:\n' + message['content'] + eos_token }}"
    "{%- if not loop.last %}{{ '\n\n' }}{% endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Response:\n' }}{%- endif -%}"
)


# ---------------------------------------------------------------- layouts


def detect_conversation_format(columns: list[str]) -> str:
    """The row layout of a dataset with these columns (see the module docstring)."""
    cols = set(columns)
    if "messages" in cols:
        return "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "response"} <= cols:
        return "prompt_response"
    if "text" in cols:
        return "text"
    raise UserError(f"data: cannot tell the layout of the fine-tuning data from its columns "
                    f"({', '.join(columns) or 'none'}). Accepted layouts: {LAYOUTS}.")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def to_messages(row: dict, fmt: str, index: int | None = None) -> list[dict]:
    """The conversation of one row as a list of {"role", "content"} dicts (validated for `messages` rows)."""
    where = f"row {index}" if index is not None else "a row"
    if fmt == "alpaca":
        extra = _text(row.get("input"))
        user = _text(row.get("instruction")) + ("\n\n" + extra if extra else "")
        return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row.get("output"))}]
    if fmt == "prompt_response":
        return [{"role": "user", "content": _text(row.get("prompt"))},
                {"role": "assistant", "content": _text(row.get("response"))}]
    if fmt != "messages":
        raise ValueError(f"to_messages: no conversation in {fmt!r} rows")
    turns = row.get("messages")
    if not isinstance(turns, (list, tuple)) or not turns:
        raise UserError(f"data: {where} of the messages data has no turns (got {turns!r}); each row needs a "
                        "list of {role, content} messages.")
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") is None or turn.get("content") is None:
            raise UserError(f"data: {where}, message {k} needs a 'role' and a 'content' (got {turn!r}).")
        if turn["role"] not in ROLES:
            raise UserError(f"data: {where}, message {k} has role {turn['role']!r}; roles must be one of "
                            f"{', '.join(ROLES)}.")
        if not isinstance(turn["content"], str):
            raise UserError(f"data: {where}, message {k} has non-text content ({type(turn['content']).__name__}); "
                            "content must be a string.")
        # arrow fills keys missing from some turns with None; templates test `is defined`, so drop them
        out.append({key: value for key, value in turn.items() if value is not None})
    if not any(t["role"] == "assistant" for t in out):
        raise UserError(f"data: {where} of the messages data has no assistant turn, so nothing to learn from; "
                        "every conversation needs at least one message with role 'assistant'.")
    return out


# ---------------------------------------------------------------- templates


def load_chat_template(value: str | None) -> str | None:
    """`tokenizer.chat_template` from the config: a path to a .jinja file, or the template text itself."""
    if value is None:
        return None
    if "{{" in value or "{%" in value:
        return value
    path = os.path.expanduser(value)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    raise UserError(f"tokenizer.chat_template: {value!r} is neither a file nor a Jinja template "
                    "(text with {{ ... }} / {% ... %}).")


def use_plain_template(tokenizer: Any, fmt: str, chat_template: str | None = None) -> bool:
    """True when instruction data meets a tokenizer without a chat template: PLAIN_TEMPLATE renders it."""
    return chat_template is None and not getattr(tokenizer, "chat_template", None) and fmt in ("alpaca",
                                                                                              "prompt_response")


def choose_template(tokenizer: Any, fmt: str, chat_template: str | None = None) -> str | None:
    """The template to render `fmt` rows with: the given one, the plain one, or None for the tokenizer's own."""
    if fmt == "text":
        return None
    if chat_template is not None:
        return chat_template
    if use_plain_template(tokenizer, fmt):
        return PLAIN_TEMPLATE
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("tokenizer: the tokenizer has no chat template, which chat (messages) data needs. Give "
                        "one with tokenizer.chat_template: path/to/template.jinja or the template text, or use a "
                        "tokenizer that ships one (an instruct/chat model's).")
    return None


def _render(tokenizer: Any, messages: list[dict], chat_template: str | None, generation: bool) -> str:
    if not messages:
        return ""
    try:
        return tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=generation)
    except UserError:
        raise
    except Exception as e:  # jinja errors (raise_exception in templates, undefined variables ...)
        raise UserError(f"tokenizer.chat_template: rendering a conversation failed: {first_line(e)}") from None


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_spans(tokenizer: Any, messages: list[dict], chat_template: str | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (content + end marker).

    Rendering is incremental: for assistant turn i, the text rendered for messages[:i] with the generation
    prompt ends where the assistant's part starts, and the text for messages[:i+1] ends where it stops.
    Whitespace after an end marker (ChatML's newline) is not part of the span, and trailing whitespace of
    the whole text is dropped.
    """
    text = _render(tokenizer, messages, chat_template, generation=False).rstrip()
    spans = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], chat_template, generation=True)
        upto = _render(tokenizer, messages[:i + 1], chat_template, generation=False).rstrip()
        start = _common_prefix(prefix, upto)
        if text.startswith(upto):
            end = len(upto)
        else:  # templates that render earlier turns differently (e.g. dropping reasoning): find the content
            found = text.find(turn["content"], spans[-1][1] if spans else 0)
            if found < 0:
                raise UserError("tokenizer.chat_template: cannot locate assistant turns in the rendered "
                                "conversation (the template does not render conversations incrementally).")
            start, end = found, found + len(turn["content"])
            eos = tokenizer.eos_token or ""
            if eos and text.startswith(eos, end):
                end += len(eos)
        if end > start:
            spans.append((start, end))
    return text, spans


def _tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError("tokenizer: the tokenizer has no eos_token; fine-tuning a causal LM needs one so the model "
                        "learns where an answer ends.")
    return eos


def _truncate(ids: list[int], labels: list[int], max_length: int) -> dict:
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated}


def encode_conversation(tokenizer: Any, messages: list[dict], max_length: int,
                        chat_template: str | None = None, last_turn_only: bool = False) -> dict:
    """input_ids and labels (-100 except on assistant tokens) of one conversation, cut to max_length.

    The text is tokenized once; a token carries loss when its characters overlap an assistant span, so a
    token merged across the boundary (" great" after a prompt ending in "assistant: ") is learned whole.

    Trailing non-assistant turns carry no loss and are left out. The sequence ends with EOS (appended when
    the rendered text does not end with it), and EOS is labelled. `truncated` tells if the end was cut off.
    `last_turn_only`: only the last assistant turn carries loss (a preference pair's completion).
    """
    eos_id = _eos_id(tokenizer)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    messages = messages[:last + 1]
    text, spans = assistant_spans(tokenizer, messages, chat_template)
    if last_turn_only:
        spans = spans[-1:]
    ids, offsets = _tokenize_with_offsets(tokenizer, text)
    labels = []
    k = 0
    for token, (start, end) in zip(ids, offsets):
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        inside = k < len(spans) and spans[k][0] < end and end > start  # overlaps an assistant span
        labels.append(token if inside else IGNORE_INDEX)
    ends_with_eos = bool(tokenizer.eos_token) and text.endswith(tokenizer.eos_token) and bool(ids) \
        and ids[-1] == eos_id
    if ends_with_eos:
        labels[-1] = eos_id  # the rendered text closes with EOS: make sure it is learned
    else:
        ids.append(eos_id)
        labels.append(eos_id)
    return _truncate(ids, labels, max_length)


def encode_text(tokenizer: Any, text: str, max_length: int) -> dict:
    """Raw text (continued pretraining): every token, and a final EOS, carries loss."""
    eos_id = _eos_id(tokenizer)
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids or ids[-1] != eos_id:
        ids.append(eos_id)
    return _truncate(ids, list(ids), max_length)


def encode_row(tokenizer: Any, row: dict, fmt: str, max_length: int, chat_template: str | None = None,
               index: int | None = None) -> dict:
    if fmt == "text":
        return encode_text(tokenizer, _text(row.get("text")), max_length)
    return encode_conversation(tokenizer, to_messages(row, fmt, index), max_length, chat_template)


# ---------------------------------------------------------------- preparation


def prepare_sft_data(cfg: Any, tokenizer: Any, seed: int, chat_template: str | None = None) -> PreparedData:
    """Load, render and tokenize SFT data (or take it from the cache); rows with no labelled token left
    after truncation are dropped and counted."""
    import datasets

    start = time.perf_counter()
    chat_template = load_chat_template(chat_template)

    def build():
        raw = load_raw_splits(cfg, seed)
        first = "train" if "train" in raw else next(iter(raw))
        fmt = detect_conversation_format(raw[first].column_names)
        for name, ds in raw.items():
            other = detect_conversation_format(ds.column_names)
            if other != fmt:
                raise UserError(f"data.{SPLIT_KEYS[name]}: the {name} data is laid out as {other} "
                                f"({', '.join(ds.column_names)}) but the {first} data as {fmt}; use one layout.")
        template = choose_template(tokenizer, fmt, chat_template)

        def encode(row: dict, index: int) -> dict:
            return encode_row(tokenizer, row, fmt, cfg.max_length, template, index)

        splits, extra = {}, {}
        for name, ds in raw.items():
            mapped = ds.map(encode, with_indices=True, remove_columns=ds.column_names,
                            num_proc=cfg.preprocessing_num_workers, desc=f"tokenizing {name}")
            keep = [i for i, labels in enumerate(mapped["labels"]) if any(x != IGNORE_INDEX for x in labels)]
            truncated = sum(mapped["truncated"])
            dropped = len(mapped) - len(keep)
            if dropped:
                mapped = mapped.select(keep)
            splits[name] = mapped.remove_columns(["truncated"])
            extra[name] = {"truncated": int(truncated), "dropped": int(dropped), "format": fmt}
        if "train" in splits and len(splits["train"]) == 0:
            raise UserError(f"data.max_length: every training example lost all its answer tokens to truncation at "
                            f"{cfg.max_length} tokens; raise data.max_length.")
        splits = datasets.DatasetDict(splits)
        stats = token_stats(splits)
        for name in stats:
            stats[name].update(extra[name])
        return splits, {"label_names": [], "format": fmt, "stats": stats}

    parts = {
        "kind": "sft", "seed": seed,
        "files": {key: files_digest(getattr(cfg, key)) for key in SPLIT_KEYS.values()},
        "hub": [cfg.dataset_name, cfg.dataset_config, cfg.train_split, cfg.eval_split, cfg.test_split],
        "tokenizer": tokenizer_digest(tokenizer),
        "chat_template": chat_template,
        "plain_template": PLAIN_TEMPLATE,
        "settings": {k: getattr(cfg, k) for k in ("format", "column_names", "column_map", "validation_split",
                                                  "max_train_samples", "max_eval_samples", "max_length")},
    }
    cacheable = cfg.cache and cfg.dataset_name is None
    splits, meta, hit = cached_dataset(cacheable, cfg.cache_dir, parts, build)
    return PreparedData(splits=splits, label_names=[], from_cache=hit, seconds=time.perf_counter() - start,
                        stats=meta["stats"])
