"""Verbalizer scores against log-probabilities computed by hand, one unpadded sequence at a time, on tiny
causal (Llama, GPT-2) and masked (BERT) LMs with known tokenizers; templates, verbalizers and label-word
tokenization; few-shot sampling."""

from __future__ import annotations

import pytest
import torch

from llmkit.errors import UserError
from llmkit.prompting.data import sample_per_class
from llmkit.prompting.scoring import PromptCollator, ScoringPlan, class_scores, encode_variants, special_tokens
from llmkit.prompting.template import Template, check_label_words, label_word_ids, resolve_verbalizer
from tests.conftest import CHATML, build_chat_tokenizer

TEXTS = ["the film was great", "it felt really dull and quite tedious to the end", "lovely"]


@pytest.fixture(scope="module")
def bpe():
    return build_chat_tokenizer(CHATML)


@pytest.fixture(scope="module")
def wordpiece(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def causal_model(family: str, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=128)).eval()


def masked_model(vocab: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=128)).eval()


def scores_for(model, tokenizer, plan, template: Template):
    rows = []
    for i, text in enumerate(TEXTS):
        before, after = template.render({"text": text})
        rows.append({**encode_variants(plan, tokenizer, before, after, special_tokens(tokenizer)), "labels": i % 2})
    batch = PromptCollator(plan, tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        return class_scores(model, batch, plan), rows


def word_log_prob(model, ids: list[int], positions: list[int], tokens: list[int]) -> float:
    """Sum of log p(token_i) read at positions[i] of one unpadded sequence."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return sum(logits[p].log_softmax(-1)[t].item() for p, t in zip(positions, tokens))


def plan_for(tokenizer, template, words, kind, **kw) -> ScoringPlan:
    context = template.before[-1][0]
    ids = [[label_word_ids(tokenizer, w, context, kind) for w in cls] for cls in words]
    return ScoringPlan(kind=kind, word_ids=[i for cls in ids for i in cls],
                       word_class=[c for c, cls in enumerate(ids) for _ in cls], num_classes=len(words), **kw)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("virtual_tokens", [False, True])
def test_causal_scores_equal_log_probs_by_hand(bpe, family, virtual_tokens):
    """Left-padded rows with position ids (and right-padded rows, the soft-prompt layout) give each word the
    log-probability of its tokens after the unpadded prompt: single- and multi-token words, sum and mean, and
    the mean/max/sum of a class's word probabilities."""
    model = causal_model(family, len(bpe))
    template = Template.parse("{text} It was {mask}.")
    words = [["terrible", "awful"], ["great"], ["superb film"]]  # "superb film": several tokens
    for multi_token in ("sum", "mean"):
        for combine in ("mean", "max", "sum"):
            plan = plan_for(bpe, template, words, "causal", multi_token=multi_token, combine=combine,
                            virtual_tokens=virtual_tokens)
            assert max(len(w) for w in plan.word_ids) > 1 and len(plan.keys) > 1
            scores, rows = scores_for(model, bpe, plan, template)
            for e, row in enumerate(rows):
                context = row["variants"][0][:row["mask_start"][0]]
                per_word = []
                for w in plan.word_ids:
                    full = context + w
                    lp = word_log_prob(model, full, [len(context) - 1 + i for i in range(len(w))], w)
                    per_word.append(lp / len(w) if multi_token == "mean" else lp)
                for c in range(len(words)):
                    group = torch.tensor([lp for lp, cls in zip(per_word, plan.word_class) if cls == c])
                    expected = {"max": group.max(), "sum": group.logsumexp(0),
                                "mean": group.logsumexp(0) - torch.log(torch.tensor(float(len(group))))}[combine]
                    assert scores[e, c].item() == pytest.approx(expected.item(), abs=1e-4)


def test_masked_scores_equal_log_probs_at_the_masks(wordpiece):
    """One mask per token of the word; token i scored at mask i; [CLS]/[SEP] around the text."""
    model = masked_model(len(wordpiece))
    template = Template.parse("{text} It was {mask} .")
    words = [["terrible"], ["great", "wonderful"]]
    plan = plan_for(wordpiece, template, words, "masked", multi_token="sum")
    scores, rows = scores_for(model, wordpiece, plan, template)
    mask = wordpiece.mask_token_id
    for e, text in enumerate(TEXTS):
        per_word = []
        for w in plan.word_ids:
            ids = wordpiece(f"{text} It was {' '.join([wordpiece.mask_token] * len(w))} .")["input_ids"]
            start = ids.index(mask)
            assert ids == rows[e]["variants"][plan.word_key[plan.word_ids.index(w)]]
            per_word.append(word_log_prob(model, ids, [start + i for i in range(len(w))], w))
        assert scores[e, 0].item() == pytest.approx(per_word[0], abs=1e-4)
        expected = torch.tensor(per_word[1:]).logsumexp(0) - torch.log(torch.tensor(2.0))
        assert scores[e, 1].item() == pytest.approx(expected.item(), abs=1e-4)


def test_multi_token_word_for_a_masked_lm_gets_one_mask_per_token(wordpiece):
    model = masked_model(len(wordpiece))
    template = Template.parse("{text} {mask}")
    plan = plan_for(wordpiece, template, [["terrible"], ["xylophonic"]], "masked", multi_token="mean")
    n = len(plan.word_ids[1])
    assert n > 1 and plan.keys == [1, n]
    scores, rows = scores_for(model, wordpiece, plan, template)
    assert rows[0]["variants"][1].count(wordpiece.mask_token_id) == n
    ids = rows[0]["variants"][1]
    start = rows[0]["mask_start"][1]
    expected = word_log_prob(model, ids, [start + i for i in range(n)], plan.word_ids[1]) / n
    assert scores[0, 1].item() == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------- templates and verbalizers


def test_template_parses_fields_and_renders_around_the_mask():
    t = Template.parse("Premise: {text_a} Hypothesis: {text_b} Answer: {mask}. ({source})")
    assert t.fields == ["text_a", "text_b", "source"]
    assert t.columns("premise", "hypothesis") == {"text_a": "premise", "text_b": "hypothesis", "source": "source"}
    before, after = t.render({"text_a": "a", "text_b": "b", "source": "c"})
    assert (before, after) == ("Premise: a Hypothesis: b Answer: ", ". (c)")
    assert t.literal_text() == "Premise: Hypothesis: Answer: . ( )"
    assert Template.parse("{{x}} {text} {mask}").render({"text": "t"}) == ("{x} t ", "")


@pytest.mark.parametrize("source, message", [
    ("{text} It was great.", "0 {mask} fields"),
    ("{text} {mask} or {mask}", "2 {mask} fields"),
    ("It was {mask}.", "no {text}"),
    ("{text!r} {mask}", "not a plain column name"),
    ("{text:>5} {mask}", "not a plain column name"),
    ("{text {mask}", "not a valid template"),
])
def test_bad_templates_say_what_is_wrong(source, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template.parse(source)


def test_a_template_may_name_any_column_directly():
    """Whether the column exists is checked against the data (the bad-input matrix's prompt-template-unknown-field)."""
    assert Template.parse("{sentence} It was {mask}.").columns("text", None) == {"sentence": "sentence"}


def test_text_b_needs_a_pair_column():
    with pytest.raises(UserError, match="data.text_pair_column"):
        Template.parse("{text_a} ? {mask} , {text_b}").columns("premise", None)


def test_verbalizer_by_name_or_index_and_its_mistakes():
    names = ["negative", "positive"]
    assert resolve_verbalizer({"negative": ["bad"], "positive": "good"}, names) == [["bad"], ["good"]]
    assert resolve_verbalizer({0: ["bad", "poor"], 1: ["good"]}, names) == [["bad", "poor"], ["good"]]
    with pytest.raises(UserError, match="class 'positive' has no label words"):
        resolve_verbalizer({"negative": ["bad"]}, names)
    with pytest.raises(UserError, match="class 'positive' has no label words"):
        resolve_verbalizer({"negative": ["bad"], "positive": []}, names)
    with pytest.raises(UserError, match="'neutral' is not a class"):
        resolve_verbalizer({"negative": ["bad"], "positive": ["good"], "neutral": ["ok"]}, names)
    # names and positions mixed: refused, both readings shown (the one rule of labels)
    with pytest.raises(UserError, match=r"0 is not a class.*other labels \(negative, positive\) are class names "
                                        r"\(as positions: 0 -> negative\)"):
        resolve_verbalizer({"negative": ["bad"], 0: ["poor"], "positive": ["good"]}, names)


def test_label_words_carry_the_space_before_the_mask(bpe):
    spaced = label_word_ids(bpe, "great", " It was ", "causal")
    assert bpe.decode(spaced) == " great"
    assert bpe.decode(label_word_ids(bpe, "great", "Answer:\n", "causal")) == "great"


def test_unknown_and_multi_token_label_words_are_refused(wordpiece):
    names = ["negative", "positive"]
    ids = [[label_word_ids(wordpiece, w, " ", "masked") for w in cls] for cls in [["terrible"], ["qqqq"]]]
    with pytest.raises(UserError, match=r"'qqqq' of class 'positive' is (unknown to the tokenizer|\d+ tokens)"):
        check_label_words(wordpiece, [["terrible"], ["qqqq"]], ids, names, multi_token="sum")
    unknown = [[label_word_ids(wordpiece, w, " ", "masked") for w in cls] for cls in [["terrible"], ["€"]]]
    with pytest.raises(UserError, match="unknown to the tokenizer"):
        check_label_words(wordpiece, [["terrible"], ["€"]], unknown, names, multi_token="sum")
    multi = [[label_word_ids(wordpiece, w, " ", "masked") for w in cls] for cls in [["terrible"], ["xylophonic"]]]
    with pytest.raises(UserError, match="prompt.multi_token=sum"):
        check_label_words(wordpiece, [["terrible"], ["xylophonic"]], multi, names, multi_token=None)
    check_label_words(wordpiece, [["terrible"], ["xylophonic"]], multi, names, multi_token="mean")


# ---------------------------------------------------------------- sampling


def test_k_shot_sampling_is_balanced_and_deterministic_per_seed():
    labels = [0] * 30 + [1] * 50 + [2] * 20
    names = ["a", "b", "c"]
    first = sample_per_class(labels, 16, seed=1, label_names=names, what="shots_per_class")
    assert first == sample_per_class(labels, 16, seed=1, label_names=names, what="shots_per_class")
    assert sorted(labels[i] for i in first) == [0] * 16 + [1] * 16 + [2] * 16
    assert len(set(first)) == 48
    assert set(first) != set(sample_per_class(labels, 16, seed=2, label_names=names, what="shots_per_class"))


def test_k_larger_than_a_class_is_refused_with_the_largest_possible_k():
    with pytest.raises(UserError, match=r"class 'c' has 20 training example\(s\)\. Lower prompt.shots_per_class "
                                        r"to at most 20"):
        sample_per_class([0] * 30 + [1] * 50 + [2] * 20, 21, seed=1, label_names=["a", "b", "c"],
                         what="shots_per_class")
