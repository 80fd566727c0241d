"""Bottleneck adapters on tiny BERT / GPT-2 / Llama models built from configs: sites, identity, training, save/load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from llmkit.models.bottleneck import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    BottleneckAdapter,
    BottleneckSettings,
    add_bottleneck_adapters,
    find_adapter_sites,
    has_bottleneck,
    is_bottleneck_dir,
    load_bottleneck,
    save_bottleneck,
)

H, LAYERS = 32, 2


def build(kind: str, seed: int = 0, hidden: int = H, **extra):
    """A tiny randomly initialised model; the same (kind, seed) always gives the same weights."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    bert = dict(hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    gpt2 = dict(n_embd=hidden, n_layer=LAYERS, n_head=2, n_positions=64)
    llama = dict(hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64, max_position_embeddings=64)
    config_cls, model_cls, sizes = {
        "bert-seq": (tf.BertConfig, tf.BertForSequenceClassification, bert),
        "bert-tok": (tf.BertConfig, tf.BertForTokenClassification, bert),
        "bert-mlm": (tf.BertConfig, tf.BertForMaskedLM, bert),
        "gpt2-lm": (tf.GPT2Config, tf.GPT2LMHeadModel, gpt2),
        "gpt2-seq": (tf.GPT2Config, tf.GPT2ForSequenceClassification, gpt2),
        "llama-lm": (tf.LlamaConfig, tf.LlamaForCausalLM, llama),
        "llama-seq": (tf.LlamaConfig, tf.LlamaForSequenceClassification, llama),
    }[kind]
    return model_cls(config_cls(**common, **sizes, **extra)).eval()


INPUT_IDS = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
HEADS = {"bert-seq": ["classifier"], "bert-tok": ["classifier"], "bert-mlm": [], "gpt2-lm": [],
         "gpt2-seq": ["score"], "llama-lm": [], "llama-seq": ["score"]}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def loss(model) -> torch.Tensor:
    out = model(input_ids=INPUT_IDS)
    # Any scalar touching every output works to exercise gradients; no labels keeps it task-agnostic.
    return out.logits.float().pow(2).mean()


def train(model, steps: int = 3, lr: float = 0.5) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss(model).backward()
        optimizer.step()


BLOCKS = {"bert": ("bert.encoder.layer", "attention.output.dense", "output.dense"),
          "gpt2": ("transformer.h", "attn.c_proj", "mlp.c_proj"),
          "llama": ("model.layers", "self_attn.o_proj", "mlp.down_proj")}


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_sites_are_the_attention_and_ffn_output_projections(kind, placement):
    stack, attention, ffn = BLOCKS[kind.split("-")[0]]
    expected_all = [s for i in range(LAYERS) for s in [(f"{stack}.{i}.{attention}", "attention"),
                                                       (f"{stack}.{i}.{ffn}", "ffn")]]
    model = build(kind)
    assert find_adapter_sites(model) == expected_all

    add_bottleneck_adapters(model, BottleneckSettings(placement=placement), HEADS[kind])
    kinds = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}[placement]
    expected = [name for name, k in expected_all if k in kinds]
    assert model._bottleneck_sites == expected
    assert sorted(model.bottleneck_adapters) == sorted(name.replace(".", "__") for name in expected)
    assert len(expected) == LAYERS * len(kinds)


@pytest.mark.parametrize("n_inner", [96, 32])
def test_gpt2_fused_qkv_is_never_mistaken_for_the_ffn(n_inner):
    """With an FFN width of 3H the fused c_attn has c_fc's shape and the right projections are still found; with
    I == H shapes cannot tell the attention output from the FFN input, so the search refuses rather than guess."""
    model = build("gpt2-lm", n_inner=n_inner)
    if n_inner == H:
        with pytest.raises(ValueError, match="attention output projection"):
            find_adapter_sites(model)
    else:
        assert [n for n, _ in find_adapter_sites(model)][:2] == ["transformer.h.0.attn.c_proj",
                                                                "transformer.h.0.mlp.c_proj"]


@pytest.mark.parametrize("kind", ["bert-seq", "gpt2-lm", "llama-lm"])
def test_adapters_are_an_exact_identity_at_init(kind):
    model = build(kind)
    before = logits(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before_bf16 = logits(model)
    add_bottleneck_adapters(model, BottleneckSettings(placement="houlsby"), HEADS[kind])
    assert torch.equal(logits(model), before)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(logits(model), before_bf16)


@pytest.mark.parametrize("kind", ["bert-seq", "gpt2-lm", "llama-seq"])
def test_only_adapters_and_head_get_gradients(kind):
    model = build(kind)
    base = logits(model)
    add_bottleneck_adapters(model, BottleneckSettings(placement="houlsby"), HEADS[kind])
    loss(model).backward()

    heads = tuple(f"{h}." for h in HEADS[kind])
    for name, param in model.named_parameters():
        trained = name.startswith("bottleneck_adapters.") or name.startswith(heads)
        assert param.requires_grad == trained, name
        assert (param.grad is not None) == trained, name
    # Zero-initialised `up` gets a gradient at once; `down` only once `up` has moved.
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("up.weight"))

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5).step()
    assert not torch.equal(logits(model), base)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_gradients_flow_under_bf16_autocast():
    model = build("llama-lm")
    add_bottleneck_adapters(model, BottleneckSettings(placement="houlsby"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        train(model, steps=2)
        loss(model).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("bottleneck_adapters.")]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", ["bert-seq", "gpt2-lm", "llama-seq"])
def test_save_load_round_trip(kind, tmp_path):
    model = build(kind)
    base_keys = set(model.state_dict())
    settings = BottleneckSettings(placement="houlsby", reduction_factor=4, activation="gelu")
    add_bottleneck_adapters(model, settings, HEADS[kind])
    train(model)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("up.weight"))
    save_bottleneck(model, tmp_path)

    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    heads = tuple(f"{h}." for h in HEADS[kind])
    assert saved and set(saved) == {n for n in model.state_dict()
                                    if n.startswith("bottleneck_adapters.") or n.startswith(heads)}
    assert {k for k in saved if k in base_keys} == {k for k in saved if k.startswith(heads)}
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["method"] == "bottleneck" and config["model_type"] == model.config.model_type
    assert BottleneckSettings.from_dict(config) == settings
    assert config["sites"] == model._bottleneck_sites and config["trainable_modules"] == HEADS[kind]
    assert is_bottleneck_dir(tmp_path) and not is_bottleneck_dir(tmp_path / "nowhere")

    fresh = build(kind)
    assert not has_bottleneck(fresh)
    loaded = load_bottleneck(fresh, tmp_path)
    assert loaded is fresh and has_bottleneck(fresh)
    assert torch.equal(logits(fresh), logits(model))
    assert not torch.equal(logits(fresh), logits(build(kind)))


def test_load_refuses_a_file_that_does_not_fit(tmp_path):
    model = add_bottleneck_adapters(build("bert-seq"), BottleneckSettings(), ["classifier"])
    save_bottleneck(model, tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    from safetensors.torch import save_file

    save_file({k: v for k, v in saved.items() if "up.bias" not in k}, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="missing bottleneck_adapters.*up.bias"):
        load_bottleneck(build("bert-seq"), tmp_path)


@pytest.mark.parametrize("other", ["gpt2-lm", "llama-lm", "bert-seq-48"])
def test_load_into_another_family_or_size_raises(other, tmp_path):
    model = add_bottleneck_adapters(build("bert-seq"), BottleneckSettings(), ["classifier"])
    save_bottleneck(model, tmp_path)
    target = build("bert-seq", hidden=48) if other == "bert-seq-48" else build(other)
    with pytest.raises(ValueError, match="model_type='bert' hidden_size=32"):
        load_bottleneck(target, tmp_path)
    assert not has_bottleneck(target)


def test_reduction_factor_and_activation_are_honoured():
    model = add_bottleneck_adapters(build("gpt2-lm"), BottleneckSettings(reduction_factor=8, activation="gelu"))
    adapter = next(iter(model.bottleneck_adapters.values()))
    assert isinstance(adapter, BottleneckAdapter)
    assert (adapter.down.in_features, adapter.down.out_features, adapter.up.out_features) == (H, H // 8, H)
    assert type(adapter.act).__name__ == "GELUActivation"

    model = add_bottleneck_adapters(build("gpt2-lm"), BottleneckSettings(reduction_factor=1000))
    assert next(iter(model.bottleneck_adapters.values())).down.out_features == 1

    with pytest.raises(ValueError, match="activation 'nope'"):
        BottleneckSettings(activation="nope")
    with pytest.raises(ValueError, match="placement"):
        BottleneckSettings(placement="sideways")
    with pytest.raises(ValueError, match="reduction_factor"):
        BottleneckSettings.from_dict({"reduction_factor": 0})


def test_adapters_follow_the_projection_dtype():
    model = add_bottleneck_adapters(build("llama-lm").to(torch.bfloat16), BottleneckSettings())
    assert all(p.dtype == torch.bfloat16 for p in model.bottleneck_adapters.parameters())
    assert logits(model).dtype == torch.bfloat16


def test_unknown_trainable_module_lists_candidates():
    with pytest.raises(ValueError, match=r"'classifer'.*\['bert', 'dropout', 'classifier'\]"):
        add_bottleneck_adapters(build("bert-seq"), BottleneckSettings(), ["classifer"])


def test_trainable_modules_match_by_qualified_suffix():
    model = add_bottleneck_adapters(build("bert-seq"), BottleneckSettings(), ["classifier", "bert.pooler.dense"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("bottleneck_")}
    assert trainable == {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"}


def test_adding_twice_raises():
    model = add_bottleneck_adapters(build("bert-seq"), BottleneckSettings())
    with pytest.raises(ValueError, match="already has bottleneck adapters"):
        add_bottleneck_adapters(model, BottleneckSettings())


def test_model_without_blocks_raises():
    model = build("bert-seq")
    model.config.num_hidden_layers = 5
    with pytest.raises(ValueError, match="cannot find the transformer blocks"):
        find_adapter_sites(model)


def test_deepcopy_keeps_hooks_on_the_copied_adapters():
    model = add_bottleneck_adapters(build("gpt2-lm"), BottleneckSettings(placement="houlsby"))
    twin = copy.deepcopy(model)
    train(twin, steps=2)
    assert not torch.equal(logits(twin), logits(model))
    assert torch.equal(logits(model), logits(build("gpt2-lm")))
