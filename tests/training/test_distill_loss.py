"""The distillation loss terms against hand computations, the uniform layer map, and the teacher cache's layout
against the teacher run live."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.training.distill import (
    DistillSettings,
    DistillTrainer,
    TeacherCache,
    build_teacher_cache,
    feature_per_token,
    kd_per_row,
    uniform_layer_map,
)


def softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_kd_equals_the_hand_computation_with_the_tau_squared_factor():
    student, teacher, tau = [1.0, 2.0, 0.0], [0.5, 1.5, 3.0], 2.0
    p_t, p_s = softmax(teacher, tau), softmax(student, tau)
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s))
    got = kd_per_row(torch.tensor([student]), torch.tensor([teacher]), tau)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(tau ** 2 * kl, rel=1e-6)
    assert got.item() == pytest.approx(4 * kl, rel=1e-6)  # the tau^2 factor, explicitly


def test_kd_is_zero_for_identical_logits_and_per_row_for_batches_and_tokens():
    logits = torch.randn(2, 5, 7)
    assert torch.allclose(kd_per_row(logits, logits, 3.0), torch.zeros(2, 5), atol=1e-6)
    other = torch.randn(2, 5, 7)
    rows = kd_per_row(other, logits, 1.5)
    assert rows.shape == (2, 5) and (rows > 0).all()
    assert rows[1, 3].item() == pytest.approx(kd_per_row(other[1, 3], logits[1, 3], 1.5).item(), rel=1e-6)


def test_feature_term_equals_the_hand_computation_and_ignores_scale():
    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    # ||(0.6, 0.8) - (1, 0)||^2 = 0.16 + 0.64
    assert feature_per_token(student, teacher).item() == pytest.approx(0.8)
    assert feature_per_token(10 * student, 0.1 * teacher).item() == pytest.approx(0.8)
    assert feature_per_token(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert uniform_layer_map(2, 4) == [(0, 1), (1, 3)]
    assert uniform_layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert uniform_layer_map(2, 3) == [(0, 1), (1, 2)]


def tiny_bert_classifier(layers=2, hidden=32, seed=0):
    """A BERT classifier without dropout (its training-mode forward is deterministic)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()


class _Tokenizer:
    """What the cache builder needs of a tokenizer: `pad` (right padding with 0)."""

    def pad(self, features, return_tensors="pt"):
        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def dataset(lengths, seed=0):
    import datasets

    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, 50, (n,), generator=g).tolist() for n in lengths]
    return datasets.Dataset.from_dict({"input_ids": rows})


def test_trainer_loss_is_alpha_ce_plus_kd_plus_beta_feature(tmp_path):
    """compute_loss on one batch = alpha * CE + (1 - alpha) * tau^2 * KL + beta * feature, each term by hand."""
    from transformers import TrainingArguments

    teacher, student = tiny_bert_classifier(4, seed=1), tiny_bert_classifier(2, seed=2).train()
    settings = DistillSettings(alpha=0.3, temperature=2.0, beta=0.5, causal_lm=False, layer_pairs=[(0, 1), (1, 3)])
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    trainer = DistillTrainer(model=student, args=args, teacher=teacher, settings=settings)
    batch = _Tokenizer().pad([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10]}])
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        loss = trainer.compute_loss(student, {**batch, "labels": labels})
        s = student(**batch, output_hidden_states=True)
        t = teacher(**batch, output_hidden_states=True)
    ce = torch.nn.functional.cross_entropy(s.logits, labels)
    kd = kd_per_row(s.logits, t.logits, 2.0).mean()
    mask = batch["attention_mask"].bool()
    feature = sum(feature_per_token(s.hidden_states[i + 1], t.hidden_states[j + 1])[mask].mean()
                  for i, j in [(0, 1), (1, 3)])
    assert loss.item() == pytest.approx((0.3 * ce + 0.7 * kd + 0.5 * feature).item(), rel=1e-5)


@pytest.mark.parametrize("per_token_logits", [False, True])
def test_cache_holds_what_the_teacher_computes_live(tmp_path, per_token_logits):
    """Classification (one row of logits per example) and causal LM (a row per token), padded and packed
    batches, hidden states of mapped layers: the cache gives what running the teacher gives."""
    teacher = tiny_bert_classifier(4)
    data = dataset([5, 3, 7, 2, 6])
    num_outputs = 3
    if per_token_logits:  # stand in for a causal LM: per-token outputs are the last layer's hidden states
        num_outputs = 32

        class PerToken(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, **kw):
                out = self.model(**{**kw, "output_hidden_states": True})
                out.logits = out.hidden_states[-1]
                return out

        teacher = PerToken(teacher).eval()
    cache = build_teacher_cache(tmp_path / "cache", teacher, data, _Tokenizer(), batch_size=2, layers=[1, 3],
                                per_token_logits=per_token_logits, num_outputs=num_outputs, hidden_width=32,
                                precision="fp32", device="cpu")
    assert isinstance(cache, TeacherCache) and (tmp_path / "cache" / "meta.json").is_file()
    indices = [2, 0, 3]
    batch = _Tokenizer().pad([{"input_ids": data[i]["input_ids"]} for i in indices])
    logits, hidden = cache.batch(indices, batch, "cpu")
    with torch.no_grad():
        live = teacher(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    atol = 2e-2 if per_token_logits else 1e-5  # per-token logits are stored as float16
    if per_token_logits:
        assert torch.allclose(logits[mask], live.logits[mask], atol=atol)
    else:
        assert torch.allclose(logits, live.logits, atol=atol)
    for layer, h in zip([1, 3], hidden):
        assert torch.allclose(h[mask], live.hidden_states[layer + 1][mask], atol=2e-2)  # float16 on disk
        assert (h[~mask] == 0).all()
    if per_token_logits:  # a packed batch: the examples one after another in one row
        packed = {"input_ids": torch.cat([torch.tensor(data[i]["input_ids"]) for i in indices])[None]}
        flat, _ = cache.batch(indices, packed, "cpu")
        assert torch.allclose(flat[0], live.logits[mask], atol=atol)
