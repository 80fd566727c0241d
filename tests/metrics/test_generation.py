"""Tests for llmkit.metrics.generation: answer extraction, normalisation, exact match and batched generate().

Generation runs a tiny random Llama built from a config with a tokenizer built here
(byte-level BPE trained on "tok00".."tok56", plus special and chat-role tokens); nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch

from llmkit.metrics.generation import (
    ANSWER_PRESETS,
    AnswerExtractor,
    GenerationSettings,
    cut_at_stop_strings,
    exact_match,
    extract_answer,
    generate,
    normalize_answer,
    render_prompts,
)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = [f"tok{i:02d}" for i in range(57)]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPTS = [
    "tok01 tok02 tok03",
    "tok10",
    "tok20 tok21 tok22 tok23 tok24 tok25 tok26",
    "tok30 tok31",
    "tok40 tok41 tok42 tok43 tok44",
]


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


def build_tokenizer(chat_template: str | None = None):
    """A small byte-level BPE tokenizer trained on WORDS that prepends <s>; pads on the right by default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=SPECIALS))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", SPECIALS.index("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens=SPECIALS[4:], padding_side="right")
    if chat_template:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models generate fastest on one thread (and are not slowed down by other busy processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def chat_tokenizer():
    return build_tokenizer(CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(build_tokenizer()), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


class GenerateSpy:
    """Wraps model.generate and records the input ids and output shapes of each call."""

    def __init__(self, model):
        self.model, self.original, self.calls = model, model.generate, []

    def __call__(self, **kwargs):
        out = self.original(**kwargs)
        self.calls.append({"input_ids": kwargs["input_ids"].clone(), "output": out.clone()})
        return out


@pytest.fixture
def spy(model, monkeypatch):
    s = GenerateSpy(model)
    monkeypatch.setattr(model, "generate", s)
    return s


def greedy(**kw) -> GenerationSettings:
    return GenerationSettings(**({"max_new_tokens": 6, "batch_size": 2} | kw))


# --------------------------------------------------------------------------------------------------
# Answer extraction
# --------------------------------------------------------------------------------------------------


GSM8K_REFERENCE = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [
        (GSM8K_REFERENCE, "gsm8k", "72"),
        ("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 10", "gsm8k", "10"),
        ("#### 1,000", "gsm8k", "1,000"),
        ("#### -5", "gsm8k", "-5"),
        ("####$18", "gsm8k", "18"),
        # model outputs without ####: the last number
        ("She sells 16 - 3 - 4 = 9 eggs.\nSo she makes 9 * 2 = 18 dollars.", "gsm8k", "18"),
        ("The answer is $18.", "gsm8k", "18"),
        ("It costs 3.50 dollars in total", "gsm8k", "3.50"),
        ("The temperature dropped to -7 degrees.", "gsm8k", "-7"),
        ("In total 1,234,567 people came.", "gsm8k", "1,234,567"),
        ("It is 12 apples\nand that's all folks", "gsm8k", "12"),
        ("first 1\nthen 2\nfinally 3 apples", "last_number", "3"),
        ("pages 3-4", "last_number", "4"),
        ("0.5 or .75", "last_number", ".75"),
        ("no number here", "gsm8k", None),
        ("no number here", "last_number", None),
        ("", "gsm8k", None),
        ("The answer: Paris.", r"answer:\s*(\w+)", "Paris"),
        ("label=positive", r"label=\w+", "label=positive"),
        ("  free text  ", None, "free text"),
    ],
)
def test_extract_answer(text, pattern, expected):
    assert extract_answer(text, pattern) == expected


def test_last_number_preset_is_a_regex_taking_the_last_number():
    import re

    m = re.search(ANSWER_PRESETS["last_number"], "a 1\nb 22\nc 333 end")
    assert m and m.group(1) == "333"


def test_custom_regex_does_not_fall_back_by_default():
    assert extract_answer("answer is 42", r"ANSWER:\s*(\d+)") is None
    assert extract_answer("answer is 42", r"ANSWER:\s*(\d+)", fallback_last_number=True) == "42"


def test_answer_extractor_fallback_option():
    assert AnswerExtractor("gsm8k")("so 5 then 6") == "6"
    assert AnswerExtractor("gsm8k", fallback_last_number=False)("so 5 then 6") is None
    assert AnswerExtractor("gsm8k", fallback_last_number=False)("#### 7") == "7"
    assert AnswerExtractor("gsm8k")(None) is None


def test_invalid_regex_is_a_clear_error():
    with pytest.raises(ValueError, match="invalid answer pattern"):
        AnswerExtractor("(unclosed")


# --------------------------------------------------------------------------------------------------
# Normalisation and exact match
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,000", "1000"),
        ("3.50", "3.5"),
        ("7.0", "7"),
        ("$18.", "18"),
        ("  42  ", "42"),
        ("-0.0", "0"),
        ("-$5", "-5"),
        (".5", "0.5"),
        ("(42)", "42"),
        ("1,234,567.890", "1234567.89"),
        (" Paris. ", "paris"),
        ('"Hello   World!"', "hello world"),
        ("1,000 apples", "1000 apples"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_non_numeric_keeps_numbers():
    assert normalize_answer("3.50", numeric=False) == "3.50"
    assert normalize_answer(" Yes! ", numeric=False) == "yes"


def test_exact_match():
    assert exact_match(["72", "$1,000.", "7.0", None], ["72", "1000", "7", "5"]) == 0.75
    assert exact_match(["7.0"], ["7"], normalize=False) == 0.0
    assert exact_match(["7"], ["7"], normalize=False) == 1.0
    assert exact_match(["Paris"], ["paris"]) == 1.0
    assert exact_match([None], [None]) == 0.0
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["1"], ["1", "2"])


def test_end_to_end_gsm8k_scoring():
    outputs = ["She makes 9 * 2 = $18.", "#### 1,000", "I don't know"]
    refs = ["...#### 18", "... \n#### 1000", "#### 3"]
    preds = [extract_answer(o, "gsm8k") for o in outputs]
    assert exact_match(preds, [extract_answer(r, "gsm8k") for r in refs]) == pytest.approx(2 / 3)


def test_cut_at_stop_strings():
    assert cut_at_stop_strings("a b\n\nc END d", ["END", "\n\n"]) == "a b"
    assert cut_at_stop_strings("abc", ["x"]) == "abc"
    assert cut_at_stop_strings("abc", []) == "abc"


# --------------------------------------------------------------------------------------------------
# Settings and prompt rendering
# --------------------------------------------------------------------------------------------------


def test_generation_config_greedy_has_no_sampling_knobs(tokenizer):
    gc = GenerationSettings(max_new_tokens=5, temperature=0.3, top_k=5, top_p=0.5).to_generation_config(tokenizer)
    assert (gc.max_new_tokens, gc.do_sample, gc.pad_token_id, gc.eos_token_id) == (5, False, 0, 3)
    assert gc.temperature is None and gc.top_k is None and gc.top_p is None
    gc.validate(strict=True)  # no "flag only used in sample-based generation" issue


def test_generation_config_sampling(tokenizer):
    gc = GenerationSettings(do_sample=True, temperature=0.7, top_k=10, top_p=0.9, repetition_penalty=1.2,
                            stop_strings=["x"]).to_generation_config(tokenizer)
    assert (gc.do_sample, gc.temperature, gc.top_k, gc.top_p) == (True, 0.7, 10, 0.9)
    assert gc.repetition_penalty == 1.2 and gc.stop_strings == ["x"]


def test_render_prompts(tokenizer, chat_tokenizer):
    assert render_prompts(tokenizer, ["tok01"], None) == ["tok01"]
    assert render_prompts(chat_tokenizer, ["tok01"], False) == ["tok01"]
    assert render_prompts(chat_tokenizer, ["tok01"], None) == ["<s><|user|> tok01 <|assistant|>"]
    assert render_prompts(chat_tokenizer, ["tok01"], True, system="tok09") == [
        "<s><|system|> tok09 <|user|> tok01 <|assistant|>"]
    with pytest.raises(ValueError, match="no chat template"):
        render_prompts(tokenizer, ["tok01"], True)


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def test_batched_greedy_equals_unbatched_and_keeps_order(model, tokenizer):
    settings = greedy(max_new_tokens=8, batch_size=3)
    batched = generate(model, tokenizer, PROMPTS, settings)
    single = [generate(model, tokenizer, [p], settings)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1  # different prompts give different outputs, so order is really checked
    reversed_out = generate(model, tokenizer, PROMPTS[::-1], settings)
    assert reversed_out == batched[::-1]


def test_left_padding_sorted_batches_and_padding_side_restored(model, tokenizer, spy):
    assert tokenizer.padding_side == "right"
    generate(model, tokenizer, PROMPTS, greedy(batch_size=2))
    assert tokenizer.padding_side == "right"
    lengths = [int((c["input_ids"] != tokenizer.pad_token_id).sum(1).max()) for c in spy.calls]
    assert lengths == sorted(lengths, reverse=True)  # longest prompts first
    for call in spy.calls:  # left padding: every row ends with a real token
        assert (call["input_ids"][:, -1] != tokenizer.pad_token_id).all()
        assert (call["input_ids"][:, 0] != tokenizer.pad_token_id).sum() >= 1


def test_padding_side_restored_on_error(model, tokenizer, monkeypatch):
    def boom(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "generate", boom)
    with pytest.raises(RuntimeError):
        generate(model, tokenizer, PROMPTS, greedy())
    assert tokenizer.padding_side == "right"


def test_sampling_is_reproducible_per_seed(model, tokenizer):
    def sample(seed):
        return generate(model, tokenizer, PROMPTS, GenerationSettings(max_new_tokens=10, do_sample=True,
                                                                      seed=seed, batch_size=2))

    first = sample(0)
    assert sample(0) == first
    assert sample(1) != first


def test_max_new_tokens_respected(model, tokenizer, spy):
    for n in (1, 4):
        start = len(spy.calls)
        outputs = generate(model, tokenizer, PROMPTS, greedy(max_new_tokens=n))
        new = [c["output"][:, c["input_ids"].shape[1] :] for c in spy.calls[start:]]
        assert all(t.shape[1] <= n for t in new)
        assert any(t.shape[1] == n for t in new)
        # the outputs are exactly the decoded new tokens (at most n of them per prompt)
        decoded = sorted(tokenizer.batch_decode(torch.cat(new) if n == 1 else [r for t in new for r in t],
                                                skip_special_tokens=True))
        assert sorted(outputs) == decoded


def test_stop_strings_cut_the_output(model, tokenizer, spy):
    full = generate(model, tokenizer, PROMPTS, greedy(max_new_tokens=10))
    middle = len(full[2]) // 2
    stop = full[2][middle : middle + 3]
    assert len(stop) == 3
    n_calls = len(spy.calls)
    cut = generate(model, tokenizer, PROMPTS, greedy(max_new_tokens=10, stop_strings=[stop]))
    for f, c in zip(full, cut):
        assert stop not in c
        assert c == cut_at_stop_strings(f, [stop])
    assert cut[2] == full[2][: full[2].index(stop)]
    # generate() itself stopped early (StopStringCriteria got the tokenizer), not only the post-hoc cut
    new_tokens = [c["output"].shape[1] - c["input_ids"].shape[1] for c in spy.calls]
    assert min(new_tokens[n_calls:]) < 10


def test_chat_template_applied_when_present(model, chat_tokenizer, spy):
    user, assistant, bos = (chat_tokenizer.convert_tokens_to_ids(t) for t in ("<|user|>", "<|assistant|>", "<s>"))
    generate(model, chat_tokenizer, PROMPTS[:2], greedy())
    ids = spy.calls[-1]["input_ids"]
    assert (ids == user).sum(1).tolist() == [1, 1]
    assert (ids[:, -1] == assistant).all()
    assert (ids == bos).sum(1).tolist() == [1, 1]  # the template's <s> is not doubled

    generate(model, chat_tokenizer, PROMPTS[:2], greedy(use_chat_template=False))
    ids = spy.calls[-1]["input_ids"]
    assert not (ids == user).any() and not (ids == assistant).any()
    assert (ids == bos).sum(1).tolist() == [1, 1]  # plain prompts get <s> from the tokenizer


def test_use_chat_template_true_without_template_fails(model, tokenizer):
    with pytest.raises(ValueError, match="no chat template"):
        generate(model, tokenizer, PROMPTS, greedy(use_chat_template=True))


def test_empty_prompt_list(model, tokenizer):
    assert generate(model, tokenizer, [], greedy()) == []


@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_encoder_only_model_is_rejected(cls_name, tokenizer):
    import transformers
    from transformers import BertConfig

    cls = getattr(transformers, cls_name)
    bert = cls(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64))
    with pytest.raises(ValueError, match="causal LM"):
        generate(bert, tokenizer, PROMPTS, greedy())
