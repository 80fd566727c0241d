"""One tokenized example per split, rendered as the model will see it, for `--dry-run`.

The most common mistakes in fine-tuning data are invisible in sizes and counts: a column read as the wrong
format, a chat template that is not the one intended, the loss on the prompt. So the dry run decodes the *actual*
input ids of each split's first example (after templates, truncation and masking), and marks the tokens that carry
loss (labels != -100) with `[[ ]]`. One function for every task, so every command shows the same format:

    example train[0]: 57 tokens, 12 trained (in [[ ]])
      | <|im_start|>user
      | Name a colour.<|im_end|>
      | <|im_start|>assistant
      | [[Blue.<|im_end|>]]

Long examples are cut in the middle (`… N tokens …`): the start shows the template, the end the trained answer.
On a terminal that takes colour (not NO_COLOR, not TERM=dumb) the trained spans are green as well.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100
OPEN, CLOSE = "[[", "]]"
LIMIT = 160  # tokens shown per sequence; longer ones keep LIMIT // 2 at each end
MARGIN = "  | "

# task.type -> how its tokenized rows are read
KINDS = {"sequence-classification": "classification", "token-classification": "tags", "causal-lm": "lm",
         "preference": "preference", "reward-model": "reward", "sentence-embedding": "pairs"}


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _pieces(tokenizer: Any, ids: Sequence[int], cuts: list[int]) -> list[str]:
    """The text of ids[cuts[i]:cuts[i+1]] for each i, decoded as one sequence (a piece is what the whole decode
    adds over its prefix, so word-piece spaces and byte-level merges come out as in the full text)."""
    out, before = [], ""
    for end in cuts[1:]:
        text = _decode(tokenizer, ids[:end])
        if text.startswith(before):
            out.append(text[len(before):])
        else:  # a decode that is not prefix-stable (a split multi-byte character): decode the piece alone
            out.append(_decode(tokenizer, ids[cuts[len(out)]:end]))
        before = text
    return out


def _marked(tokenizer: Any, ids: Sequence[int], trained: Sequence[bool]) -> str:
    """The decoded text with each run of trained tokens between [[ ]]."""
    cuts = [0] + [i for i in range(1, len(ids)) if trained[i] != trained[i - 1]] + [len(ids)]
    pieces = _pieces(tokenizer, ids, cuts) if ids else []
    return "".join(f"{OPEN}{p}{CLOSE}" if trained[start] else p for start, p in zip(cuts, pieces))


def render(tokenizer: Any, ids: Sequence[int], trained: Sequence[bool] | None = None, limit: int = LIMIT) -> str:
    """`ids` decoded, trained tokens in [[ ]]; more than `limit` tokens: the middle cut out, with a marker."""
    ids = list(ids)
    trained = list(trained) if trained is not None else [False] * len(ids)
    if len(ids) <= limit:
        return _marked(tokenizer, ids, trained)
    keep = limit // 2
    cut = len(ids) - 2 * keep
    inside = sum(trained[keep:len(ids) - keep])
    note = f" ({inside} trained)" if inside else ""
    return (_marked(tokenizer, ids[:keep], trained[:keep]) + f" … {cut} tokens{note} … "
            + _marked(tokenizer, ids[-keep:], trained[-keep:]))


def block(text: str) -> list[str]:
    """Text as indented lines, each behind a margin (so leading spaces and empty lines stay visible)."""
    return [MARGIN + line for line in text.split("\n")]


GREEN, RESET = "\033[32m", "\033[0m"


def takes_colour(stream: Any = None) -> bool:
    """Whether `stream` (stdout) is a terminal that shows colour: see https://no-color.org for NO_COLOR."""
    stream = stream or sys.stdout
    return (getattr(stream, "isatty", lambda: False)() and "NO_COLOR" not in os.environ
            and os.environ.get("TERM") != "dumb")


def coloured(lines: Sequence[str]) -> list[str]:
    """`lines` with every [[ ]] span green, the marks kept (a span may run over several lines: each line
    closes its colour, the next reopens it)."""
    out, inside = [], False
    for line in lines:
        text, rest = (GREEN if inside else ""), line
        while True:
            mark = CLOSE if inside else OPEN
            at = rest.find(mark)
            if at < 0:
                break
            text += rest[:at] + (f"{RESET}{CLOSE}" if inside else f"{OPEN}{GREEN}")
            rest, inside = rest[at + len(mark):], not inside
        out.append(text + rest + (RESET if inside else ""))
    return out


def trained_mask(labels: Sequence[int]) -> list[bool]:
    return [label != IGNORE_INDEX for label in labels]


def lm_lines(tokenizer: Any, row: dict, head: str) -> list[str]:
    """Causal LM / SFT / pretraining: the tokens with labels != -100 carry the loss."""
    ids, trained = row["input_ids"], trained_mask(row["labels"])
    n = sum(trained)
    if n == len(ids):  # pretraining: every token; marks around all of it would only hide the text
        return [f"{head}: {len(ids)} tokens, all trained", *block(render(tokenizer, ids))]
    return [f"{head}: {len(ids)} tokens, {n} trained (in {OPEN} {CLOSE})", *block(render(tokenizer, ids, trained))]


def classification_lines(tokenizer: Any, row: dict, head: str, label_names: Sequence[str]) -> list[str]:
    """Sequence classification: the text and its label (name and id; every class set for multi-label rows)."""
    label = row["labels"]
    if isinstance(label, (list, tuple)):  # multi-label: one 0/1 per class
        on = [f"{label_names[i]} ({i})" for i, v in enumerate(label) if v]
        shown = "labels " + (", ".join(on) if on else "none")
    else:
        shown = f"label {label_names[int(label)] if int(label) < len(label_names) else '?'} (id {int(label)})"
    return [f"{head}: {len(row['input_ids'])} tokens; {shown}", *block(render(tokenizer, row["input_ids"]))]


def tag_lines(tokenizer: Any, row: dict, head: str, label_names: Sequence[str]) -> list[str]:
    """Token classification: each word (from a labelled token to the next) followed by /TAG."""
    ids, labels = list(row["input_ids"])[:LIMIT], list(row["labels"])[:LIMIT]
    starts = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    cuts = sorted({0, *starts, len(ids)})
    pieces = _pieces(tokenizer, ids, cuts)
    text = "".join(p + (f"/{label_names[labels[s]]}" if labels[s] != IGNORE_INDEX else "")
                   for s, p in zip(cuts, pieces))
    more = len(row["input_ids"]) - len(ids)
    shown = text + (f" … {more} more tokens" if more > 0 else "")
    return [f"{head}: {len(row['input_ids'])} tokens, {len(starts)} tagged (word/TAG)", *block(shown)]


def pair_lines(tokenizer: Any, row: dict, head: str, trained: bool) -> list[str]:
    """Preference pairs: the prompt with each answer; `trained`: the answers carry the loss (DPO-style) and are
    marked; a reward model scores the whole conversation (nothing marked)."""
    mark = f" (trained in {OPEN} {CLOSE})" if trained else ""
    prompt = row["prompt_ids"]
    if "completion_ids" in row:  # an unpaired row (KTO): one answer, desirable or not
        answers = [("desirable" if row["label"] else "undesirable", row["completion_ids"])]
        lines = [f"{head}: prompt {len(prompt)} tokens, completion {len(answers[0][1])}{mark}"]
    else:
        answers = [("chosen", row["chosen_ids"]), ("rejected", row["rejected_ids"])]
        lines = [f"{head}: prompt {len(prompt)} tokens, chosen {len(answers[0][1])}, rejected "
                 f"{len(answers[1][1])}{mark}"]
    for name, answer in answers:
        flags = [False] * len(prompt) + [trained] * len(answer)
        lines += [f"  {name}:", *block(render(tokenizer, list(prompt) + list(answer), flags))]
    return lines


def sentence_lines(tokenizer: Any, row: dict, head: str, roles: Sequence[str], scored: bool) -> list[str]:
    """Sentence pairs: each role's text; the score (scaled to [0, 1]) for scored pairs."""
    sizes = ", ".join(f"{role} {len(row[f'{role}_input_ids'])} tokens" for role in roles)
    score = f"; score {row['labels']:.3g} (scaled to [0, 1])" if scored else ""
    lines = [f"{head}: {sizes}{score}"]
    for role in roles:
        lines += [f"  {role}:", *block(render(tokenizer, row[f"{role}_input_ids"]))]
    return lines


def example_lines(tokenizer: Any, row: dict, kind: str, head: str, label_names: Sequence[str] = (),
                  roles: Sequence[str] = ("anchor", "positive"), scored: bool = False) -> list[str]:
    """One tokenized row rendered for its kind (KINDS' values; "lm" also for pretraining blocks)."""
    if kind == "lm":
        return lm_lines(tokenizer, row, head)
    if kind == "classification":
        return classification_lines(tokenizer, row, head, label_names)
    if kind == "tags":
        return tag_lines(tokenizer, row, head, label_names)
    if kind in ("preference", "reward"):
        return pair_lines(tokenizer, row, head, trained=kind == "preference")
    if kind == "pairs":
        return sentence_lines(tokenizer, row, head, roles, scored)
    raise ValueError(f"unknown example kind {kind!r}")  # a caller's bug, not a user's mistake


def preview_splits(tokenizer: Any, splits: Any, kind: str, **options: Any) -> list[str]:
    """The first example of every split, rendered (example_lines' options: label_names, roles, scored)."""
    lines = []
    for name, ds in splits.items():
        if len(ds):
            lines += example_lines(tokenizer, ds[0], kind, f"example {name}[0]", **options)
    return lines
