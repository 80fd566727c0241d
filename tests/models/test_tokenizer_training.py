"""tokenizer.train: bpe / wordpiece / unigram tokenizers trained on a tiny corpus, their errors and their cache."""

from __future__ import annotations

import random

import pytest

from llmkit.config.sections import TokenizerTrainSpec
from llmkit.errors import UserError
from llmkit.models.tokenizer_training import cached_tokenizer, default_special_tokens, train_tokenizer

WORDS = ["the", "film", "story", "acting", "was", "really", "quite", "plot", "music", "and", "a", "it", "felt",
         "great", "wonderful", "awful", "boring", "Paris", "London", "café", "naïve", "résumé", "42", "2024"]
SAMPLE = "The film was really great, and the music felt wonderful in Paris."
TYPES = ["bpe", "wordpiece", "unigram"]
VOCAB = {"bpe": 400, "wordpiece": 300, "unigram": 300}


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + rng.choice([".", "!", "?", ","])
             for _ in range(n)]
    return lines + [SAMPLE, "The quick brown fox jumps over the lazy dog; café naïve résumé."]


def batches(lines: list[str], size: int = 32):
    """A texts() callable: a fresh iterator of batches every call."""
    return lambda: (lines[i:i + size] for i in range(0, len(lines), size))


def spec(kind: str = "bpe", **kw) -> TokenizerTrainSpec:
    return TokenizerTrainSpec(type=kind, vocab_size=kw.pop("vocab_size", VOCAB[kind]), **kw)


@pytest.fixture(scope="module")
def trained() -> dict:
    """One tokenizer per (type, objective), trained once for the module."""
    texts = batches(corpus())
    return {(kind, obj): train_tokenizer(spec(kind), texts, obj) for kind in TYPES for obj in ("clm", "mlm")}


# ---------------------------------------------------------------- round trips and special tokens


@pytest.mark.parametrize("kind", TYPES)
def test_round_trip(trained, kind):
    tok = trained[kind, "clm"]
    text = SAMPLE + " The café was naïve."
    ids = tok(text)["input_ids"]
    decoded = tok.decode(ids)
    if kind == "wordpiece":  # BERT's decoder joins punctuation with spaces
        assert decoded.replace(" ", "") == text.replace(" ", "")
    else:
        assert decoded == text
    assert tok.unk_token_id not in ids


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_special_tokens_take_first_ids_by_role(trained, kind, objective):
    tok = trained[kind, objective]
    roles = default_special_tokens(spec(kind), objective)
    for i, (role, token) in enumerate(roles.items()):
        assert getattr(tok, f"{role}_token") == token
        assert tok.convert_tokens_to_ids(token) == i
    assert 50 < len(tok) <= VOCAB[kind]


def test_default_special_tokens():
    assert default_special_tokens(spec("bpe"), "clm") == {"pad": "<pad>", "eos": "<|endoftext|>"}
    assert default_special_tokens(spec("unigram"), "clm") == {"pad": "<pad>", "unk": "<unk>", "eos": "<|endoftext|>"}
    assert list(default_special_tokens(spec("bpe"), "mlm")) == ["pad", "unk", "cls", "sep", "mask"]
    given = {"eos": "</s>", "pad": "<pad>", "bos": "<s>"}
    assert list(default_special_tokens(spec("bpe", special_tokens=given), "clm")) == ["pad", "bos", "eos"]


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_save_and_reload(trained, kind, objective, tmp_path):
    from transformers import AutoTokenizer

    tok = trained[kind, objective]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tok.get_vocab()
    assert again(SAMPLE)["input_ids"] == tok(SAMPLE)["input_ids"]
    assert again.special_tokens_map == tok.special_tokens_map
    if objective == "mlm":
        assert again(SAMPLE, "the film")["token_type_ids"] == tok(SAMPLE, "the film")["token_type_ids"]


@pytest.mark.parametrize("kind", TYPES)
def test_mlm_wraps_in_cls_sep(trained, kind):
    tok = trained[kind, "mlm"]
    ids = tok("the film")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    pair = tok("the film", "was great")
    assert pair["input_ids"].count(tok.sep_token_id) == 2
    assert pair["token_type_ids"][-1] == 1 and pair["token_type_ids"][0] == 0  # segment ids, as BERT's
    assert tok.mask_token_id is not None


@pytest.mark.parametrize("kind", TYPES)
def test_clm_adds_nothing(trained, kind):
    tok = trained[kind, "clm"]
    ids = tok("the film")["input_ids"]
    assert tok.convert_ids_to_tokens(ids[:1])[0] not in tok.all_special_tokens
    assert not set(ids) & set(tok.all_special_ids)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<pad>"
    assert tok(["the film", "a"], padding=True)["input_ids"][1][-1] == tok.pad_token_id


def test_max_length():
    tok = train_tokenizer(spec("wordpiece", max_length=64), batches(corpus(50)), "mlm")
    assert tok.model_max_length == 64


@pytest.mark.parametrize("kind", TYPES)
def test_lowercase(kind):
    tok = train_tokenizer(spec(kind, lowercase=True), batches(corpus()), "clm")
    assert tok("Paris FILM")["input_ids"] == tok("paris film")["input_ids"]
    learned = [tok.convert_tokens_to_string([t]) for t in tok.get_vocab() if t not in tok.all_special_tokens]
    # byte-level bpe keeps all 256 bytes (A-Z among them); only learned, longer tokens must be lowercase
    assert not any(t.strip("#▁ ") != t.strip("#▁ ").lower() for t in learned if len(t.strip("#▁ ")) > 1)
    assert "paris" in " ".join(learned)


def test_cased_wordpiece_keeps_case_and_accents(trained):
    tok = trained["wordpiece", "clm"]
    assert tok.decode(tok("Paris café")["input_ids"]) == "Paris café"
    lower = train_tokenizer(spec("wordpiece", lowercase=True), batches(corpus()), "clm")
    assert lower.decode(lower("Paris café")["input_ids"]) == "paris cafe"  # uncased BERT strips accents


def test_duplicate_tokens_allowed():
    given = {"pad": "<pad>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"}
    tok = train_tokenizer(spec("bpe", special_tokens=given), batches(corpus(50)), "clm")
    assert tok.bos_token_id == tok.eos_token_id == 1


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("kwargs", "objective", "needles"), [
    ({"type": "wordpiece", "vocab_size": 4}, "mlm", ["tokenizer.train.vocab_size", "4", "5 special", "[PAD]"]),
    ({"type": "bpe", "vocab_size": 200}, "clm", ["tokenizer.train.vocab_size", "200", "258"]),
    ({"type": "bpe", "special_tokens": {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]"}}, "mlm",
     ["tokenizer.train.special_tokens", "mask"]),
    ({"type": "bpe", "special_tokens": {"pad": "[PAD]", "mask": "[MASK]", "sep": "[SEP]"}}, "mlm",
     ["tokenizer.train.special_tokens", "cls"]),
    ({"type": "bpe", "special_tokens": {"pad": "<pad>", "bos": "<s>"}}, "clm",
     ["tokenizer.train.special_tokens", "eos"]),
    ({"type": "bpe", "special_tokens": {"eos": "</s>"}}, "clm", ["tokenizer.train.special_tokens", "pad"]),
    ({"type": "unigram", "special_tokens": {"eos": "</s>", "pad": "<pad>"}}, "clm",
     ["tokenizer.train.special_tokens", "unk"]),
    ({"type": "bpe", "special_tokens": {"eos": "</s>", "pad": "<pad>", "end": "x"}}, "clm",
     ["tokenizer.train.special_tokens", "end"]),
    ({"type": "bpe", "special_tokens": {"eos": "", "pad": "<pad>"}}, "clm", ["tokenizer.train.special_tokens.eos"]),
])
def test_errors_name_the_key(kwargs, objective, needles):
    kind = kwargs.pop("type")
    with pytest.raises(UserError) as e:
        train_tokenizer(spec(kind, **kwargs), batches(corpus(20)), objective)
    for needle in needles:
        assert needle in str(e.value)


@pytest.mark.parametrize("kind", TYPES)
def test_empty_corpus(kind):
    with pytest.raises(UserError, match="data.train_file"):
        train_tokenizer(spec(kind), batches(["", "  ", ""]), "clm")
    with pytest.raises(UserError, match="data.train_file"):
        train_tokenizer(spec(kind), lambda: iter([]), "clm")


def test_bpe_minimum_vocab_is_accepted():
    tok = train_tokenizer(spec("bpe", vocab_size=258), batches(corpus(20)), "clm")
    assert len(tok) == 258


# ---------------------------------------------------------------- cache


def test_cached_tokenizer(tmp_path):
    lines = corpus(100)
    calls = []

    def texts():
        calls.append(1)
        return batches(lines)()

    parts = {"train": ["digest-a"]}
    first, hit = cached_tokenizer(spec("wordpiece"), texts, "mlm", parts)
    assert not hit and calls
    calls.clear()
    second, hit = cached_tokenizer(spec("wordpiece"), texts, "mlm", parts)
    assert hit and not calls
    assert second.get_vocab() == first.get_vocab()
    assert second(SAMPLE)["input_ids"] == first(SAMPLE)["input_ids"]
    assert second.mask_token == "[MASK]"

    assert not cached_tokenizer(spec("wordpiece", vocab_size=250), texts, "mlm", parts)[1]
    assert not cached_tokenizer(spec("wordpiece"), texts, "mlm", {"train": ["digest-b"]})[1]
    assert not cached_tokenizer(spec("wordpiece"), texts, "clm", parts)[1]
    assert cached_tokenizer(spec("wordpiece", vocab_size=250), texts, "mlm", parts)[1]


def test_cached_tokenizer_location(tmp_path):
    cached_tokenizer(spec("unigram"), batches(corpus(50)), "clm", {"k": 1}, cache_dir=str(tmp_path))
    entries = list((tmp_path / "tokenizers").iterdir())
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").is_file()
    assert not any(".tmp-" in p.name for p in entries)
