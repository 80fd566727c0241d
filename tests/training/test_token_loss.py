"""Token-weighted language-model losses: per-row NLL, exact eval loss / perplexity, gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmkit.data.pretraining import IGNORE_INDEX, BlockCollator
from llmkit.training.trainer import TokenLossTrainer, per_example_nll
from tests.conftest import build_chat_tokenizer

# ---------------------------------------------------------------- per_example_nll


def hand_nll(logits, labels, shift):
    sums, counts = [], []
    for row_logits, row_labels in zip(logits, labels):
        total, count = 0.0, 0
        for t in range(len(row_labels)):
            source = t - 1 if shift else t
            if source < 0 or row_labels[t] == IGNORE_INDEX:
                continue
            total += float(F.cross_entropy(row_logits[source].float()[None], row_labels[t][None]))
            count += 1
        sums.append(total)
        counts.append(count)
    return torch.tensor(sums), torch.tensor(counts)


@pytest.mark.parametrize("shift", [True, False])
def test_per_example_nll_matches_a_hand_loop(shift):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 11, generator=g) * 3
    labels = torch.randint(11, (4, 7), generator=g)
    labels[0, 5:] = IGNORE_INDEX  # padding
    labels[1, ::2] = IGNORE_INDEX  # scattered (MLM-like)
    labels[2, 0] = IGNORE_INDEX  # never scored when shifting anyway
    labels[3] = IGNORE_INDEX  # nothing scored
    nll, count = per_example_nll(logits, labels, shift)
    want_nll, want_count = hand_nll(logits, labels, shift)
    assert count.tolist() == want_count.tolist()
    assert torch.allclose(nll, want_nll, atol=1e-5)
    assert nll[3] == 0 and count[3] == 0
    assert count.tolist() == ([4, 3, 6, 0] if shift else [5, 3, 6, 0])


def test_per_example_nll_is_float32_for_half_precision_logits():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 9, generator=g) * 4).bfloat16()
    labels = torch.randint(9, (2, 5), generator=g)
    nll, _ = per_example_nll(logits, labels, shift=True)
    assert nll.dtype == torch.float32
    assert torch.allclose(nll, hand_nll(logits, labels, True)[0], atol=1e-4)


# ---------------------------------------------------------------- models and data


@pytest.fixture(scope="module")
def bpe_tok():
    return build_chat_tokenizer(None)


@pytest.fixture(scope="module")
def wp_tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def tiny_gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # no dropout, so training-mode losses are deterministic; a wide init makes per-token losses differ
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.5)
    return GPT2LMHeadModel(config)


def tiny_bert(tok):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        vocab_size=len(tok), max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.5)
    return BertForMaskedLM(config)


def random_rows(tok, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    normal = torch.tensor([i for i in range(len(tok)) if i not in special])
    return [normal[torch.randint(len(normal), (n,), generator=g)].tolist() for n in lengths]


def clm_features(tok, lengths, seed=0):
    return [{"input_ids": ids} for ids in random_rows(tok, lengths, seed)]


def mlm_features(tok, lengths, seed=0):
    """Pre-masked rows (as mask_once makes them): a varying number of [MASK]ed, labelled positions per row."""
    g = torch.Generator().manual_seed(seed + 100)
    features = []
    for ids in random_rows(tok, lengths, seed):
        labels = [IGNORE_INDEX] * len(ids)
        k = int(torch.randint(1, max(2, len(ids) // 3), (1,), generator=g))
        for p in torch.randperm(len(ids), generator=g)[:k].tolist():
            labels[p], ids[p] = ids[p], tok.mask_token_id
        features.append({"input_ids": ids, "labels": labels})
    return features


def dataset(features):
    import datasets

    return datasets.Dataset.from_list(features)


def hand_row_losses(model, features, shift):
    """(summed NLL, scored tokens) of every row, each row run alone (no padding)."""
    model.eval()
    out = []
    with torch.no_grad():
        for f in features:
            ids = torch.tensor([f["input_ids"]])
            labels = torch.tensor([f.get("labels", f["input_ids"])])
            logits = model(input_ids=ids).logits[0]
            if shift:
                logits, labels = logits[:-1], labels[0, 1:]
            else:
                labels = labels[0]
            keep = labels != IGNORE_INDEX
            out.append((float(F.cross_entropy(logits[keep], labels[keep], reduction="sum")), int(keep.sum())))
    return out


def training_args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False,
                             save_strategy="no", disable_tqdm=True, **kw)


# ---------------------------------------------------------------- exact eval loss


CASES = {"clm": (tiny_gpt2, "bpe", clm_features, True), "mlm": (tiny_bert, "wp", mlm_features, False)}


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_eval_loss_is_token_weighted_over_the_whole_set(tmp_path, bpe_tok, wp_tok, objective):
    build, which, make_features, shift = CASES[objective]
    tok = bpe_tok if which == "bpe" else wp_tok
    model = build(tok)
    features = make_features(tok, [16] * 5 + [5])
    rows = hand_row_losses(model, features, shift)
    total, tokens = sum(r[0] for r in rows), sum(r[1] for r in rows)
    exact = total / tokens
    # what a mean of per-batch means gives with batches of 2 (the last holding the short block)
    batches = [rows[i:i + 2] for i in range(0, len(rows), 2)]
    naive = sum(sum(r[0] for r in b) / sum(r[1] for r in b) for b in batches) / len(batches)
    assert abs(naive - exact) > 1e-3  # the setup tells the two apart

    trainer = TokenLossTrainer(model=model, args=training_args(tmp_path, per_device_eval_batch_size=2),
                               eval_dataset=dataset(features), data_collator=BlockCollator(tok, objective),
                               shift_labels=shift)
    metrics = trainer.evaluate()

    if objective == "clm":
        assert tokens == 5 * 15 + 4  # every token but the first of each block is predicted
    assert metrics["eval_tokens"] == tokens
    assert metrics["eval_loss"] == pytest.approx(exact, abs=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(exact), rel=1e-5)
    assert abs(metrics["eval_loss"] - naive) > 1e-3
    assert "eval_token_loss" not in metrics


def test_evaluate_with_a_metric_key_prefix(tmp_path, bpe_tok):
    model = tiny_gpt2(bpe_tok)
    features = clm_features(bpe_tok, [16, 16, 5], seed=3)
    rows = hand_row_losses(model, features, True)
    exact = sum(r[0] for r in rows) / sum(r[1] for r in rows)
    trainer = TokenLossTrainer(model=model, args=training_args(tmp_path, per_device_eval_batch_size=2),
                               data_collator=BlockCollator(bpe_tok, "clm"), shift_labels=True)
    metrics = trainer.evaluate(dataset(features), metric_key_prefix="test")
    assert metrics["test_loss"] == pytest.approx(exact, abs=1e-5)
    assert metrics["test_tokens"] == 15 + 15 + 4
    assert metrics["test_perplexity"] == pytest.approx(math.exp(exact), rel=1e-5)


# ---------------------------------------------------------------- gradient accumulation



def tiny_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64, initializer_range=0.5))


MODELS = {"gpt2": (tiny_gpt2, "clm"), "llama": (tiny_llama, "clm"), "bert": (tiny_bert, "mlm")}


def first_logged_loss(tmp_path, model, tok, objective, features, batch, accumulation):
    args = training_args(tmp_path / f"b{batch}-ga{accumulation}", per_device_train_batch_size=batch,
                         gradient_accumulation_steps=accumulation, max_steps=1, logging_steps=1, learning_rate=0.0,
                         train_sampling_strategy="sequential")
    trainer = TokenLossTrainer(model=model, args=args, train_dataset=dataset(features),
                               data_collator=BlockCollator(tok, objective), shift_labels=objective == "clm")
    trainer.train()
    return next(h["loss"] for h in trainer.state.log_history if "loss" in h)


@pytest.fixture(scope="module")
def train_losses(tmp_path_factory, bpe_tok, wp_tok):
    """First logged train loss of batch 4 x GA 1 (and batch 1 x GA 4 when asked) on four blocks, one short; with
    the hand-computed token mean and the mean of per-row means. Memoised: each run once per module."""
    memo = {}

    def get(name, accumulate=False):
        key = (name, accumulate)
        if key not in memo:
            build, objective = MODELS[name]
            tok = bpe_tok if objective == "clm" else wp_tok
            features = (clm_features if objective == "clm" else mlm_features)(tok, [16, 5, 16, 16], seed=1)
            rows = hand_row_losses(build(tok), features, objective == "clm")
            out = {"exact": sum(r[0] for r in rows) / sum(r[1] for r in rows),
                   "mean_of_rows": sum(r[0] / r[1] for r in rows) / len(rows)}  # per-micro-batch means at GA 4
            tmp = tmp_path_factory.mktemp(name)
            out["whole"] = first_logged_loss(tmp, build(tok), tok, objective, features, batch=4, accumulation=1)
            if accumulate:
                out["accumulated"] = first_logged_loss(tmp, build(tok), tok, objective, features, batch=1,
                                                       accumulation=4)
            memo[key] = out
        return memo[key]

    return get


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_gradient_accumulation_gives_the_same_first_loss(train_losses, name):
    losses = train_losses(name, accumulate=True)
    assert abs(losses["mean_of_rows"] - losses["exact"]) > 1e-3  # a per-micro-batch mean would show
    assert losses["accumulated"] == pytest.approx(losses["whole"], abs=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_logged_train_loss_is_the_mean_nll_per_predicted_token(train_losses, name):
    losses = train_losses(name, accumulate=name != "llama")
    assert losses["whole"] == pytest.approx(losses["exact"], abs=1e-4)
    if "accumulated" in losses:
        assert losses["accumulated"] == pytest.approx(losses["exact"], abs=1e-4)
