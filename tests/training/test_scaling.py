"""llmkit.training.scaling: non-embedding parameter counts, the power-law fit and its plot."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from llmkit.training.scaling import FORMULA, PowerLawFit, fit_power_law, non_embedding_parameters, plot_scaling

SIZES = [1e5, 3e5, 1e6, 3e6, 1e7, 3e7]


def law(n, alpha, n_c):
    """Exact points of L(N) = (N_c / N)^alpha."""
    return [(n_c / x) ** alpha for x in n]


# --- fit_power_law -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,n_c", [(0.076, 8.8e13), (0.3, 1e5)])
def test_fit_recovers_exact_law(alpha, n_c):
    fit = fit_power_law(SIZES, law(SIZES, alpha, n_c))
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.n_c == pytest.approx(n_c, rel=1e-6)
    assert abs(fit.r2 - 1.0) < 1e-9
    assert fit.points == len(SIZES)


def test_fit_with_two_points_has_r2_one():
    fit = fit_power_law([1e6, 1e7], law([1e6, 1e7], 0.1, 1e12))
    assert fit.r2 == 1.0
    assert fit.alpha == pytest.approx(0.1, rel=1e-9)
    assert fit.points == 2


def test_fit_on_noisy_data():
    rng = np.random.default_rng(0)
    losses = np.array(law(SIZES, 0.076, 8.8e13)) * np.exp(rng.normal(0, 0.01, len(SIZES)))
    fit = fit_power_law(SIZES, losses)
    assert 0 < fit.r2 < 1
    assert fit.alpha == pytest.approx(0.076, abs=0.03)


def test_fit_accepts_repeated_sizes():
    sizes = [1e6, 1e6, 1e7, 1e7]
    fit = fit_power_law(sizes, [4.0, 4.2, 3.0, 3.1])
    assert fit.points == 4 and fit.alpha > 0 and 0 < fit.r2 < 1


@pytest.mark.parametrize(
    "params,losses,match",
    [
        ([1e6], [3.0], "at least 2"),
        ([], [], "at least 2"),
        ([1e6, 1e6, 1e6], [3.0, 2.9, 2.8], "distinct"),
        ([0, 1e6], [3.0, 2.0], "> 0"),
        ([-1e5, 1e6], [3.0, 2.0], "> 0"),
        ([1e5, 1e6], [3.0, 0.0], "> 0"),
        ([1e5, 1e6], [3.0, -2.0], "> 0"),
        ([1e5, 1e6], [3.0, float("nan")], "finite"),
        ([1e5, 1e6], [3.0], "losses"),
        ([1e5, 1e6, 1e7], [3.0, 3.0, 3.0], "equal"),
    ],
)
def test_fit_rejects_bad_input(params, losses, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(params, losses)


def test_predict_matches_formula_and_data():
    fit = PowerLawFit(alpha=0.3, n_c=1e5, r2=1.0, points=3)
    assert isinstance(fit.predict(1e6), float)
    assert fit.predict(1e6) == pytest.approx((1e5 / 1e6) ** 0.3)
    out = fit.predict(np.array(SIZES))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, law(SIZES, 0.3, 1e5))
    fitted = fit_power_law(SIZES, law(SIZES, 0.076, 8.8e13))
    np.testing.assert_allclose(fitted.predict(SIZES), law(SIZES, 0.076, 8.8e13), rtol=1e-9)


def test_to_dict_is_json_serialisable():
    fit = fit_power_law(np.array(SIZES), np.array(law(SIZES, 0.3, 1e5)))
    d = json.loads(json.dumps(fit.to_dict()))
    assert d["formula"] == FORMULA == "L(N) = (N_c / N)^alpha"
    assert set(d) == {"formula", "alpha", "n_c", "r2", "points"}
    assert d["points"] == len(SIZES) and math.isclose(d["alpha"], 0.3, rel_tol=1e-9)


# --- plot_scaling --------------------------------------------------------------------------------------------------


def _is_png(path):
    return path.is_file() and path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_with_fit_and_labels(tmp_path):
    losses = law(SIZES, 0.076, 8.8e13)
    out = tmp_path / "scaling.png"
    plot_scaling(SIZES, losses, fit_power_law(SIZES, losses), out, labels=[f"s{i}" for i in range(len(SIZES))])
    assert _is_png(out)


def test_plot_without_fit(tmp_path):
    out = tmp_path / "scaling.png"
    plot_scaling([1e6], [3.2], None, str(out), ylabel="train loss")
    assert _is_png(out)


def test_plot_rejects_label_mismatch(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        plot_scaling([1e6, 1e7], [3.0, 2.5], None, tmp_path / "x.png", labels=["a"])


def test_import_is_light():
    code = (
        "import sys, llmkit.training.scaling; "
        "print(sorted(m for m in ('numpy', 'matplotlib', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- non_embedding_parameters --------------------------------------------------------------------------------------


def total(model):
    return sum(p.numel() for p in model.parameters())  # parameters() already yields tied tensors once


def test_gpt2_excludes_wte_and_wpe():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0)
    )
    assert model.lm_head.weight is model.transformer.wte.weight
    n = non_embedding_parameters(model)
    assert n == total(model) - 100 * 32 - 64 * 32
    # by hand: per block 12 d^2 + 13 d (attention, MLP, two layer norms), plus the final layer norm (2 d)
    d = 32
    assert n == 2 * (12 * d * d + 13 * d) + 2 * d


def _llama(tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def test_llama_untied_excludes_lm_head():
    model = _llama(tie=False)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    n = non_embedding_parameters(model)
    assert n == total(model) - 2 * 100 * 32
    d, ff = 32, 64
    assert n == 2 * (4 * d * d + 3 * d * ff + 2 * d) + d  # attention, gated MLP, two RMSNorms; final norm


def test_llama_tied_counts_nothing_twice():
    model = _llama(tie=True)
    assert total(model) == sum(p.numel() for p in _llama(tie=False).parameters()) - 100 * 32
    assert non_embedding_parameters(model) == total(model) - 100 * 32


def test_bert_excludes_all_embeddings_keeps_decoder_bias():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    model = BertForMaskedLM(config)
    decoder = model.get_output_embeddings()
    assert decoder.weight is model.bert.embeddings.word_embeddings.weight
    n = non_embedding_parameters(model)
    # word, position and token_type tables; the tied decoder weight is the word table; its bias (100) stays
    assert n == total(model) - (100 + 64 + 2) * 32
    assert decoder.bias.numel() == 100


def test_untied_output_projection_of_another_shape_is_counted():
    from torch import nn

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 3)

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.head

    assert non_embedding_parameters(Toy()) == (4 * 4 + 4) + (4 * 3 + 3)
    assert non_embedding_parameters(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))) == 4 * 2 + 2
