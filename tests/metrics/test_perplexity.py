"""Perplexity of causal and masked LMs (llmkit.metrics.perplexity) against hand computations on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.metrics.perplexity import (
    PerplexityResult,
    causal_lm_perplexity,
    choose_mask_positions,
    masked_lm_perplexity,
    sliding_windows,
)
from tests.conftest import sentiment_rows

VOCAB = 64


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64)).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()


def token_ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def scoring_begin(t: int, max_length: int, stride: int) -> int:
    """Start of the first window of the scheme whose end passes token t (windows start at multiples of stride)."""
    begin = 0
    while begin + max_length <= t:
        begin += stride
    return begin


def reference_nll(model, ids: list[int], max_length: int, stride: int) -> float:
    """Plain loop: -log p(x_t | x_begin..x_{t-1}) for every t >= 1, one forward per token."""
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            begin = scoring_begin(t, max_length, stride)
            logits = model(input_ids=torch.tensor([ids[begin:t]]), use_cache=False).logits[0, -1]
            total -= torch.log_softmax(logits.float(), -1)[ids[t]].item()
    return total


# --- sliding_windows ------------------------------------------------------------------------------------------


def test_sliding_windows_by_hand():
    assert sliding_windows(10, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    assert sliding_windows(11, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2), (8, 11, 1)]
    assert sliding_windows(10, 8, 3) == [(0, 8, 7), (3, 10, 2)]


def test_sliding_windows_without_overlap():
    assert sliding_windows(10, 4, 4) == [(0, 4, 3), (4, 8, 4), (8, 10, 2)]
    assert sliding_windows(8, 4, 4) == [(0, 4, 3), (4, 8, 4)]


def test_sliding_windows_short_sequence_is_one_window():
    assert sliding_windows(5, 8, 3) == [(0, 5, 4)]
    assert sliding_windows(8, 8, 8) == [(0, 8, 7)]
    assert sliding_windows(1, 4, 2) == []
    assert sliding_windows(0, 4, 2) == []


@pytest.mark.parametrize("n", [2, 3, 7, 10, 31, 64])
@pytest.mark.parametrize("max_length,stride", [(4, 1), (4, 2), (4, 4), (8, 3), (5, 5), (16, 7)])
def test_sliding_windows_score_every_token_once(n, max_length, stride):
    windows = sliding_windows(n, max_length, stride)
    assert sum(n_new for _, _, n_new in windows) == n - 1
    scored = [t for _, end, n_new in windows for t in range(end - n_new, end)]
    assert scored == list(range(1, n))
    for begin, end, n_new in windows:
        assert end - begin <= max_length and 0 < n_new <= end - begin
        assert begin % stride == 0
    assert windows[-1][1] == n and all(end < n for _, end, _ in windows[:-1])  # stops once the end is reached


@pytest.mark.parametrize("max_length,stride", [(4, 5), (0, 1), (4, 0), (-1, -1)])
def test_sliding_windows_rejects_bad_arguments(max_length, stride):
    with pytest.raises(ValueError):
        sliding_windows(10, max_length, stride)


# --- PerplexityResult -----------------------------------------------------------------------------------------


def test_result_formulas():
    r = PerplexityResult(tokens_scored=4, nll_sum=6.0)
    assert r.mean_nll == pytest.approx(1.5)
    assert r.perplexity == pytest.approx(math.exp(1.5))
    assert r.bits_per_byte(10) == pytest.approx(6.0 / math.log(2) / 10)
    assert r.as_dict() == {"tokens_scored": 4, "nll": pytest.approx(1.5), "perplexity": pytest.approx(math.exp(1.5))}
    d = r.as_dict(prefix="eval_", n_bytes=10)
    assert set(d) == {"eval_tokens_scored", "eval_nll", "eval_perplexity", "eval_bits_per_byte"}
    assert d["eval_bits_per_byte"] == pytest.approx(r.bits_per_byte(10))
    assert math.isnan(PerplexityResult(0, 0.0).mean_nll)


# --- causal LM ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2])
def test_causal_single_window_equals_one_forward(make_model):
    model, ids = make_model(), token_ids(20)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    expected = -sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)))
    for max_length in (20, 32):
        r = causal_lm_perplexity(model, ids, max_length=max_length, stride=max_length)
        assert r.tokens_scored == len(ids) - 1
        assert r.nll_sum == pytest.approx(expected, abs=1e-4)
        assert r.mean_nll == pytest.approx(expected / (len(ids) - 1), abs=1e-5)


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2])
def test_causal_overlapping_windows_equal_hand_loop(make_model):
    model, ids = make_model(), token_ids(23, seed=3)
    r = causal_lm_perplexity(model, ids, max_length=8, stride=3, batch_size=2)
    assert r.tokens_scored == len(ids) - 1
    assert r.nll_sum == pytest.approx(reference_nll(model, ids, max_length=8, stride=3), abs=1e-4)


def test_causal_batch_size_does_not_change_result():
    model, ids = tiny_llama(), token_ids(40, seed=5)
    r1 = causal_lm_perplexity(model, ids, max_length=8, stride=3, batch_size=1)
    r4 = causal_lm_perplexity(model, torch.tensor(ids), max_length=8, stride=3, batch_size=4)
    assert r1.tokens_scored == r4.tokens_scored == len(ids) - 1
    assert r4.mean_nll == pytest.approx(r1.mean_nll, abs=1e-5)


def test_causal_restores_training_mode_and_bits_per_byte():
    model, ids = tiny_gpt2().train(), token_ids(12)
    r = causal_lm_perplexity(model, ids, max_length=6, stride=6, device="cpu")
    assert model.training
    assert r.bits_per_byte(30) == pytest.approx(r.nll_sum / math.log(2) / 30)
    assert r.as_dict(n_bytes=30)["bits_per_byte"] == pytest.approx(r.bits_per_byte(30))


def test_causal_rejects_too_short_input():
    with pytest.raises(ValueError):
        causal_lm_perplexity(tiny_gpt2(), [5], max_length=4, stride=2)


# --- masked LM ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm_setup(tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64)).eval()
    texts = [r["text"] for r in sentiment_rows(9, seed=4)]
    blocks = [tok(" ".join(texts[: i % 3 + 1]))["input_ids"] for i in range(len(texts))]  # varying lengths
    assert len({len(b) for b in blocks}) > 1

    def special(ids):
        return tok.get_special_tokens_mask(ids, already_has_special_tokens=True)

    return tok, model, blocks, special


def run_mlm(setup, **kw):
    tok, model, blocks, special = setup
    return masked_lm_perplexity(model, blocks, special, mask_token_id=tok.mask_token_id, vocab_size=len(tok),
                                pad_token_id=tok.pad_token_id, **kw)


def test_mlm_deterministic_across_calls_and_batch_sizes(mlm_setup):
    r1 = run_mlm(mlm_setup, batch_size=1)
    r5 = run_mlm(mlm_setup, batch_size=5)
    again = run_mlm(mlm_setup, batch_size=5)
    assert r1.tokens_scored == r5.tokens_scored == again.tokens_scored > 0
    assert r5.nll_sum == again.nll_sum
    assert r5.nll_sum == pytest.approx(r1.nll_sum, abs=1e-4)
    assert r5.mean_nll == pytest.approx(r1.mean_nll, abs=1e-5)


def test_mlm_seed_changes_the_masking(mlm_setup):
    assert run_mlm(mlm_setup, seed=1).nll_sum != pytest.approx(run_mlm(mlm_setup, seed=0).nll_sum, abs=1e-6)


def test_mlm_tokens_scored_is_number_of_chosen_positions(mlm_setup):
    _, _, blocks, special = mlm_setup
    expected = sum(len(choose_mask_positions(b, special(b), 0.15, torch.Generator().manual_seed(7 + i)))
                   for i, b in enumerate(blocks))
    assert run_mlm(mlm_setup, seed=7).tokens_scored == expected
    counts = [len(b) - 2 for b in blocks]  # [CLS] ... [SEP]
    assert expected == sum(max(1, round(0.15 * c)) for c in counts)


def test_mlm_equals_hand_computation_for_one_block(mlm_setup):
    tok, model, blocks, special = mlm_setup
    block = blocks[0]
    positions = choose_mask_positions(block, special(block), 0.15, torch.Generator().manual_seed(0))
    masked = [tok.mask_token_id if i in positions else t for i, t in enumerate(block)]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([masked])).logits[0].float(), -1)
    expected = -sum(logp[p, block[p]].item() for p in positions)
    r = masked_lm_perplexity(model, [block], special, tok.mask_token_id, len(tok), pad_token_id=tok.pad_token_id)
    assert r.tokens_scored == len(positions)
    assert r.nll_sum == pytest.approx(expected, abs=1e-4)


def test_choose_mask_positions_never_picks_special_tokens():
    block = list(range(40))
    special = [1 if i in (0, 1, 17, 38, 39) else 0 for i in range(40)]
    seen = set()
    for seed in range(50):
        picked = choose_mask_positions(block, special, 0.3, torch.Generator().manual_seed(seed))
        assert len(picked) == round(0.3 * 35) and picked == sorted(set(picked))
        assert not any(special[p] for p in picked)
        seen.update(picked)
    assert seen == {i for i in range(40) if not special[i]}  # every ordinary position can be chosen


def test_choose_mask_positions_edge_cases():
    g = torch.Generator().manual_seed(0)
    assert len(choose_mask_positions([5, 6, 7, 8], [1, 0, 0, 1], 0.01, g)) == 1  # at least one
    assert choose_mask_positions([5, 6], [1, 1], 0.5, g) == []
    a = choose_mask_positions(list(range(30)), [0] * 30, 0.2, torch.Generator().manual_seed(3))
    assert a == choose_mask_positions(list(range(30)), [0] * 30, 0.2, torch.Generator().manual_seed(3))
    with pytest.raises(ValueError):
        choose_mask_positions([1, 2], [0], 0.5, g)
    with pytest.raises(ValueError):
        choose_mask_positions([1, 2], [0, 0], 0.0, g)
