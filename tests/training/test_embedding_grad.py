"""On CPU the large embeddings' gradient goes into one kept buffer (llmkit/training/embedding_grad.py): the same
values as the dense backward, a dense .grad for clipping and the optimizer, undone after training, and used by
every single-process CPU training run."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch

from llmkit.training import embedding_grad
from llmkit.training.embedding_grad import embedding_gradients_in_place, reusable_embeddings
from tests.conftest import write_yaml
from tests.recipes.helpers import invoke


class Lookup(torch.nn.Module):
    def __init__(self, rows: int = 5000, dim: int = 16, tied: bool = False, padding_idx: int | None = 0):
        super().__init__()
        self.embed = torch.nn.Embedding(rows, dim, padding_idx=padding_idx)
        self.head = torch.nn.Linear(dim, rows, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids))).logsumexp(-1).sum()


@pytest.fixture
def small_tables(monkeypatch):
    monkeypatch.setattr(embedding_grad, "MIN_ELEMENTS", 1000)


def _grads(model, batches, accumulate: bool):
    """The embedding's gradient after each step (a copy) and the tensor object .grad was."""
    seen = []
    for ids in batches:
        for part in (ids[:2], ids[2:]) if accumulate else (ids,):
            model(part).backward()
        seen.append((model.embed.weight.grad.clone(), model.embed.weight.grad))
        model.zero_grad(set_to_none=True)
    return seen


@pytest.mark.parametrize("accumulate", [False, True])
def test_the_gradient_equals_the_dense_backward_and_lives_in_one_buffer(small_tables, accumulate):
    torch.manual_seed(0)
    model = Lookup()
    # repeated rows within a batch (summed), the padding row (no gradient), rows far apart
    batches = [torch.tensor([[0, 3, 3, 3], [4999, 0, 7, 3], [1, 2, 2, 0], [9, 9, 9, 9]]),
               torch.randint(0, 5000, (4, 6)), torch.randint(0, 5000, (4, 3))]
    dense = _grads(model, batches, accumulate)
    with embedding_gradients_in_place(model) as changed:
        assert changed == [model.embed]
        kept = _grads(model, batches, accumulate)
    for (want, _), (got, tensor) in zip(dense, kept):
        assert not tensor.is_sparse
        assert torch.equal(got, want)
    assert len({tensor.data_ptr() for _, tensor in kept}) == 1  # the same buffer every step
    assert len({tensor.data_ptr() for _, tensor in dense}) >= 1
    # undone: a plain dense lookup again, its gradient a new tensor, not the buffer
    assert model.embed.sparse is False
    model(batches[0]).backward()
    assert not model.embed.weight.grad.is_sparse
    assert model.embed.weight.grad.data_ptr() != kept[0][1].data_ptr()


def test_only_large_trainable_unshared_plain_embeddings_are_changed(small_tables):
    assert reusable_embeddings(Lookup(tied=True)) == []  # a tied LM head adds a dense gradient anyway
    frozen = Lookup()
    frozen.embed.weight.requires_grad_(False)
    assert reusable_embeddings(frozen) == []
    assert reusable_embeddings(Lookup(rows=50)) == []  # 800 elements: below MIN_ELEMENTS
    clipped = Lookup()
    clipped.embed.max_norm = 1.0
    assert reusable_embeddings(clipped) == []
    plain = Lookup()
    with embedding_gradients_in_place(plain, enabled=False) as changed:
        assert changed == [] and plain.embed.sparse is False


def test_tables_of_real_architectures(small_tables):
    """BERT's word and position tables are chosen (above the lowered size), its two-row token types are not;
    GPT-2's word table is tied to its LM head and is not, its position table is."""
    from llmkit.testing import tiny_model

    bert, _ = tiny_model("bert", hidden_size=64, heads=4, layers=1)
    embeddings = bert.bert.embeddings
    assert reusable_embeddings(bert) == [embeddings.word_embeddings, embeddings.position_embeddings]
    gpt2, _ = tiny_model("gpt2", task="causal-lm", hidden_size=64, heads=4, layers=1)
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    assert reusable_embeddings(gpt2) == [gpt2.transformer.wpe]


def test_a_cpu_training_run_uses_the_buffer_and_trains_the_same_weights(tiny_config, tmp_path, monkeypatch):
    """The finetune command on CPU trains its word embeddings through the kept buffer, and the run's losses and
    final weights are those of the dense backward."""
    from safetensors.torch import load_file

    import llmkit.training.loop as loop

    original, changed, name = embedding_grad.embedding_gradients_in_place, {}, None

    @contextmanager
    def spy(model, enabled=True):
        with original(model, enabled) as modules:
            changed[name] = [tuple(module.weight.shape) for module in modules]
            yield modules

    monkeypatch.setattr(loop, "embedding_gradients_in_place", spy)
    runs = {}
    # the tests' word table (156 x 32 elements) counts as large in the first run, not in the second
    for name, minimum in (("kept", 1000), ("dense", 1 << 40)):
        monkeypatch.setattr(embedding_grad, "MIN_ELEMENTS", minimum)
        cfg = dict(tiny_config, output_dir=str(tmp_path / name))
        cfg["train"] = dict(cfg["train"], num_train_epochs=2, save_strategy="no")
        result = invoke("finetune", write_yaml(tmp_path / f"{name}.yaml", cfg))
        assert result.exit_code == 0, result.output
        losses = [json.loads(line).get("loss") for line in (tmp_path / name / "log_history.jsonl").open()]
        runs[name] = ([x for x in losses if x is not None], load_file(tmp_path / name / "model" / "model.safetensors"))
    # the word table (the tests' tokenizer: 156 tokens) and the 64 positions; not the 2 token types
    assert len(changed["kept"]) == 2 and changed["kept"][0][0] > 100 and changed["kept"][1] == (64, 32)
    assert changed["dense"] == []
    assert runs["kept"][0] == runs["dense"][0]
    kept, dense = runs["kept"][1], runs["dense"][1]
    assert kept.keys() == dense.keys()
    for key in kept:
        assert torch.equal(kept[key], dense[key]), key
    word = next(k for k in kept if "word_embeddings" in k)
    from tests.recipes.helpers import initial_weights

    assert not torch.equal(kept[word], initial_weights(tiny_config)[word])  # it trained
