"""Prompt data: labelled splits, K-shot sampling per class, demonstrations, and examples rendered into the
token rows `scoring` scores (the same rendering for training, evaluation and calibration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.data.classification import check_labels, encode_labels, infer_label_names
from llmkit.data.loading import SPLIT_KEYS, as_text, empty_text_notes, limit_splits, note, read_splits, require_columns
from llmkit.errors import UserError
from llmkit.prompting.scoring import ScoringPlan, encode_variants, special_tokens
from llmkit.prompting.template import Template


@dataclass
class LabelledSplits:
    splits: dict  # name -> datasets.Dataset with the template's columns and `labels` (class ids)
    label_names: list[str]


def load_labelled_splits(data_cfg: Any, template: Template, seed: int,
                         classes: list[str] | None = None) -> LabelledSplits:
    """The raw splits with labels as class ids; every column the template names must exist. The classes: from
    data.label_names, else the training data, else `classes` (the verbalizer's keys)."""
    raw = read_splits(data_cfg)
    require_columns(raw, data_cfg, ["label_column"])
    columns = template.columns(data_cfg.text_column, data_cfg.text_pair_column)
    for name, ds in raw.items():
        for field, column in columns.items():
            if column not in ds.column_names:
                key = {"text": "data.text_column", "text_a": "data.text_column",
                       "text_b": "data.text_pair_column"}.get(field, "prompt.template")
                source = getattr(data_cfg, SPLIT_KEYS[name]) or data_cfg.dataset_name
                raise UserError(f"{key}: {column!r} is not a column of the {name} data ({source}), yet the "
                                f"template field {{{field}}} reads column {column!r}. Its columns are: "
                                f"{', '.join(ds.column_names)}. "
                                f"Fix {key} or the data (data.column_map renames columns)"
                                + ("; {text} reads data.text_column." if key == "prompt.template" else "."))
    # only the text columns the template reads ({text}, {text_b}) are checked: other fields may be empty by design
    text_keys = [key for key, field in (("text_column", ("text", "text_a")), ("text_pair_column", ("text_b",)))
                 if any(f in columns for f in field)]
    for line in empty_text_notes(raw, data_cfg, text_keys) + check_labels(raw, data_cfg, multi_label=False):
        note(line)
    raw = limit_splits(raw, data_cfg, seed)
    names = infer_label_names(raw.get("train"), data_cfg, multi_label=False, fallback=classes)
    origin = "prompt.verbalizer's keys" if not data_cfg.label_names and "train" not in raw else None
    return LabelledSplits(encode_labels(raw, names, data_cfg, multi_label=False, origin=origin), names)


def sample_per_class(labels: list[int], k: int, seed: int, label_names: list[str], what: str) -> list[int]:
    """K example indices per class, drawn with `seed` (the same seed gives the same examples), shuffled."""
    import numpy as np

    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for c, name in enumerate(label_names):
        members = [i for i, label in enumerate(labels) if label == c]
        if len(members) < k:
            raise UserError(f"prompt.{what}: {k} per class, but class {name!r} has {len(members)} training "
                            f"example(s). Lower prompt.{what} to at most {min_count(labels, len(label_names))}, or "
                            "add training data.")
        picked += rng.choice(members, size=k, replace=False).tolist()
    rng.shuffle(picked)
    return [int(i) for i in picked]


def min_count(labels: list[int], classes: int) -> int:
    return min(sum(1 for label in labels if label == c) for c in range(classes))


class Renderer:
    """Turns examples into the scored rows: text fields (each cut to `max_field_tokens`) filled into the
    template, demonstrations in front, the chat template around it when asked; refuses prompts longer than
    the model's context."""

    def __init__(self, template: Template, columns: dict[str, str], tokenizer: Any, plan: ScoringPlan,
                 max_field_tokens: int, context_length: int, chat: bool, separator: str,
                 context_key: str | None = None):
        self.template = template
        self.context_key = context_key  # the config key that set context_length, when one did
        self.columns = columns
        self.tokenizer = tokenizer
        self.plan = plan
        self.max_field_tokens = max_field_tokens
        self.context_length = context_length
        self.chat = chat
        self.separator = separator
        self.special = ([], []) if chat else special_tokens(tokenizer)
        self.demonstrations: list[tuple[str, str, str]] = []  # (before, label word, after) per demonstration
        self.truncated = 0

    def fields(self, row: dict) -> dict[str, str]:
        values = {}
        for field, column in self.columns.items():
            text = as_text(row[column]).strip()  # the template places the spaces
            values[field] = self._cut(text)
        return values

    def _cut(self, text: str) -> str:
        """The text's first `max_field_tokens` tokens (as text; data.max_length per field)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) <= self.max_field_tokens:
            return text
        self.truncated += 1
        return text[:enc["offset_mapping"][self.max_field_tokens - 1][1]]

    def set_demonstrations(self, rows: list[dict], label_words: list[str]) -> None:
        """Demonstrations: each row rendered with the template, its class's first label word at the mask."""
        self.demonstrations = []
        for row in rows:
            before, after = self.template.render(self.fields(row))
            self.demonstrations.append((before, label_words[row["labels"]], after))

    def prompt(self, values: dict[str, str]) -> tuple[str, str]:
        """The text before and after the mask, demonstrations and chat template included."""
        before, after = self.template.render(values)
        if self.chat:
            messages = []
            for d_before, word, _ in self.demonstrations:
                messages += [{"role": "user", "content": d_before.strip()}, {"role": "assistant", "content": word}]
            messages.append({"role": "user", "content": before.strip()})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), ""
        shown = [d_before + word + d_after for d_before, word, d_after in self.demonstrations]
        return self.separator.join([*shown, before]), after

    def encode(self, values: dict[str, str], label: int | None) -> dict:
        before, after = self.prompt(values)
        row = encode_variants(self.plan, self.tokenizer, before, after, self.special)
        longest = max(len(v) for v in row["variants"]) + (self.plan.longest_word if self.plan.kind == "causal" else 0)
        if longest > self.context_length:
            shown = (f"{len(self.demonstrations)} demonstration(s) and " if self.demonstrations else "")
            limit, raise_it = (f"{self.context_key}={self.context_length}", f"a higher {self.context_key} (up to "
                               "the model's context), ") if self.context_key else \
                (f"the model's context of {self.context_length} tokens", "")
            raise UserError(f"prompt: a prompt of {longest} tokens ({shown}the example, each text field cut to "
                            f"data.max_length={self.max_field_tokens} tokens) does not fit {limit}. Use "
                            f"{raise_it}fewer prompt.demonstrations_per_class, a shorter template, or a lower "
                            "data.max_length.")
        row["labels"] = label if label is not None else -100
        row["length"] = longest
        return row

    def encode_split(self, ds: Any) -> Any:
        """A datasets.Dataset of scored rows, sorted longest first (evaluation pads less; `example` keeps the
        original position)."""
        import datasets

        rows = []
        for i, row in enumerate(ds):
            encoded = self.encode(self.fields(row), row["labels"])
            encoded["example"] = i
            rows.append(encoded)
        rows.sort(key=lambda r: -r["length"])
        return datasets.Dataset.from_list(rows)

    def content_free(self, inputs: list[str]) -> Any:
        """Rows for contextual calibration: every text field replaced by each content-free input."""
        import datasets

        return datasets.Dataset.from_list([self.encode({f: text for f in self.columns}, None) for text in inputs])


def label_context(template: Template, tokenizer: Any, chat: bool) -> str:
    """The text a label word follows, to tokenize the word as the model sees it at the mask."""
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                             add_generation_prompt=True)
    literal = template.before[-1][0]
    return literal if literal.strip() else "x" + literal
