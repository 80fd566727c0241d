"""Cloze templates and verbalizers: how an example becomes a prompt, and a class becomes label words.

A template is Python format syntax with one `{mask}` (where the answer goes) and at least one text field:
`{text}` / `{text_a}` (data.text_column), `{text_b}` (data.text_pair_column) or any other data column by
name. A verbalizer maps every class to one or more label words. Label words are turned into token ids once
(`label_word_ids`), and the same ids are scored at training and evaluation time.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from llmkit.errors import UserError

MASK = "mask"
TEXT_FIELDS = ("text", "text_a")


@dataclass(frozen=True)
class Template:
    """A parsed template: the literal/field segments before and after `{mask}`."""

    source: str
    before: tuple[tuple[str, str | None], ...]  # (literal text, field name or None) in order
    after: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        """Parse `source`; raise ValueError with a message that says what is wrong and how to fix it."""
        try:
            parts = list(string.Formatter().parse(source))
        except ValueError as e:
            raise ValueError(f"{source!r} is not a valid template ({e}); fields are written {{text}}, literal braces "
                             "{{ and }}.") from None
        masks = sum(1 for _, name, _, _ in parts if name == MASK)
        if masks != 1:
            raise ValueError(f"{source!r} has {masks} {{mask}} fields; a template needs exactly one {{mask}}, where "
                             "the label word goes, e.g. '{text} It was {mask}.'")
        fields = [name for _, name, _, _ in parts if name not in (None, MASK)]
        for _, name, spec, conversion in parts:
            if name is not None and (not name.isidentifier() or spec or conversion):
                raise ValueError(f"{source!r}: field {{{name}{'!' + conversion if conversion else ''}"
                                 f"{':' + spec if spec else ''}}} is not a plain column name; write fields as "
                                 "{text}, {text_b} or {column}.")
        if not fields:  # any column may be named directly; whether it exists is checked against the data
            raise ValueError(f"{source!r} has no {{text}} field (nor any other data column), so the example text "
                             "never reaches the model; e.g. '{text} It was {mask}.'")
        split = next(i for i, (_, name, _, _) in enumerate(parts) if name == MASK)
        before = tuple((literal, name) for literal, name, _, _ in parts[:split]) + ((parts[split][0], None),)
        after = tuple((literal, name) for literal, name, _, _ in parts[split + 1:])
        return cls(source, before, after)

    @property
    def fields(self) -> list[str]:
        """The data fields the template uses, in order (each once)."""
        seen = [name for _, name in (*self.before, *self.after) if name]
        return list(dict.fromkeys(seen))

    def columns(self, text_column: str, text_pair_column: str | None) -> dict[str, str]:
        """Field -> data column: text/text_a -> data.text_column, text_b -> data.text_pair_column, else itself."""
        out = {}
        for name in self.fields:
            if name in TEXT_FIELDS:
                out[name] = text_column
            elif name == "text_b":
                if not text_pair_column:
                    raise UserError(f"prompt.template: {{text_b}} needs data.text_pair_column (the column of the "
                                    f"second text); set it, or remove {{text_b}} from {self.source!r}.")
                out[name] = text_pair_column
            else:
                out[name] = name
        return out

    def render(self, values: dict[str, str]) -> tuple[str, str]:
        """The prompt text before and after the mask, with the fields filled in."""
        return _fill(self.before, values), _fill(self.after, values)

    def literal_text(self) -> str:
        """The template's own words (fields and mask removed), e.g. 'It was' — the soft-prompt init text."""
        words = " ".join(literal for literal, _ in (*self.before, *self.after))
        return " ".join(words.split())


def _fill(segments: tuple[tuple[str, str | None], ...], values: dict[str, str]) -> str:
    return "".join(literal + (values[name] if name else "") for literal, name in segments)


def shared_label_word(verbalizer: dict[Any, Any]) -> str | None:
    """A message naming a label word given for two classes (compared without surrounding spaces), or None.

    Such a word's probability would count for both classes, which then can never be told apart by it."""
    owner: dict[str, Any] = {}
    for key, value in verbalizer.items():
        listed = [value] if isinstance(value, str) else list(value or [])
        for word in dict.fromkeys(str(w).strip() for w in listed):
            if word and word in owner:
                return (f"the label word {word!r} is given for both {str(owner[word])!r} and {str(key)!r}; a word can "
                        "stand for one class only (its score would count for both). Give each class its own words.")
            owner.setdefault(word, key)
    return None


def resolve_verbalizer(verbalizer: dict[Any, Any], label_names: list[str]) -> list[list[str]]:
    """The label words of each class, in label order. Keys are read by the one rule of labels
    (data/classification.py LabelReading): a key equal to a class name is that class; integer keys are
    positions in the class list only when no key is a class name."""
    from llmkit.data.classification import LabelReading, normalise_label

    shared = shared_label_word(verbalizer)
    if shared:
        raise UserError(f"prompt.verbalizer: {shared}")
    words: list[list[str] | None] = [None] * len(label_names)
    # A key written as digits ('1') that is no class name may still be a position in the class list.
    pairs = [(key, int(key) if isinstance(key, str) and key.lstrip("-").isdigit() and key not in label_names
              else normalise_label(key)) for key in verbalizer]
    reading = LabelReading(label_names, {read for _, read in pairs})
    for (key, read), value in zip(pairs, verbalizer.values()):
        if read in reading.outside:
            raise UserError(f"prompt.verbalizer: {key!r} is not a class; the classes are "
                            f"{', '.join(label_names)}.{reading.index_note}")
        index = reading(read)
        if words[index] is not None:
            raise UserError(f"prompt.verbalizer: class {label_names[index]!r} is given twice; keep one.")
        listed = [value] if isinstance(value, str) else list(value or [])
        words[index] = [str(w) for w in listed]
    for i, listed in enumerate(words):
        if not listed or not all(w.strip() for w in listed):
            raise UserError(f"prompt.verbalizer: class {label_names[i]!r} has no label words; give each class one or "
                            f"more, e.g. {{{label_names[i]}: [word]}}.")
    return [list(w) for w in words]  # type: ignore[arg-type]


def label_word_ids(tokenizer: Any, word: str, context: str, kind: str) -> list[int]:
    """The token ids of `word` as it follows `context` (the prompt text before the mask).

    Causal LMs: the ids the tokenizer gives the word after this context (the whole text tokenized, minus the
    context's tokens: a leading space becomes part of the word's token, as in lm-evaluation-harness). Masked
    LMs: the word tokenized on its own, with a leading space when the template puts one before the mask
    (byte-level BPE vocabularies such as RoBERTa's spell `great` and ` great` differently).
    """
    if kind == "masked":
        spaced = (" " + word) if context[-1:].isspace() else word
        return tokenizer(spaced, add_special_tokens=False)["input_ids"]
    head_text = context.rstrip(" ")  # the spaces before the mask go with the word, as in encode_variants
    word, context = context[len(head_text):] + word, head_text
    whole = tokenizer(context + word, add_special_tokens=False)["input_ids"]
    head = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    if whole[:len(head)] == head:
        return whole[len(head):]
    return tokenizer(word, add_special_tokens=False)["input_ids"]  # the word merged into the context's last token


def check_label_words(tokenizer: Any, words: list[list[str]], ids: list[list[list[int]]], label_names: list[str],
                      multi_token: str | None) -> None:
    """Refuse label words the tokenizer does not know, multi-token words unless a scoring rule is set, and two
    classes' words that become the same tokens (e.g. 'Bad' and 'bad' for an uncased tokenizer)."""
    unk = tokenizer.unk_token_id
    for name, class_words, class_ids in zip(label_names, words, ids):
        for word, tokens in zip(class_words, class_ids):
            pieces = tokenizer.convert_ids_to_tokens(tokens)
            if not tokens or (unk is not None and unk in tokens):
                raise UserError(f"prompt.verbalizer: label word {word!r} of class {name!r} is unknown to the "
                                f"tokenizer (it becomes {pieces or 'nothing'}); choose a word in its vocabulary.")
            if len(tokens) > 1 and multi_token is None:
                raise UserError(f"prompt.verbalizer: label word {word!r} of class {name!r} is {len(tokens)} tokens "
                                f"({' + '.join(map(repr, pieces))}) for this tokenizer. Choose a single-token word, "
                                "or score multi-token words with prompt.multi_token=sum (or mean) of their token "
                                "log-probabilities.")
    owner: dict[tuple[int, ...], tuple[str, str]] = {}
    for name, class_words, class_ids in zip(label_names, words, ids):
        for word, tokens in zip(class_words, class_ids):
            other = owner.setdefault(tuple(tokens), (name, word))
            if other[0] != name and tokens:
                raise UserError(f"prompt.verbalizer: label word {word!r} of class {name!r} and {other[1]!r} of class "
                                f"{other[0]!r} are the same tokens for this tokenizer "
                                f"({' + '.join(map(repr, tokenizer.convert_ids_to_tokens(tokens)))}), so the two "
                                "classes could not be told apart by them; give each class its own words.")
