"""Sentence embeddings: finetune task.type: sentence-embedding (scored pairs with CoSENT / cosine regression,
pairs and triplets with in-batch negatives) and pretrain objective: contrastive (unsupervised SimCSE), through
the real CLI on 2-layer BERTs; the saved model is a sentence-transformers model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tests.conftest import NEUTRAL, sentiment_rows, write_csv, write_yaml
from tests.recipes.helpers import invoke, save_model_dir, tiny_bert_config

pytest.importorskip("sentence_transformers")

WORDS = NEUTRAL  # 13 words the fixture tokenizer knows


def scored_rows(n: int, seed: int) -> list[dict]:
    """Sentence pairs whose score (0-5) is how many words they share: learnable by a tiny encoder."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.sample(WORDS, 5)
        shared = rng.randint(0, 5)
        b = a[:shared] + rng.sample([w for w in WORDS if w not in a], 5 - shared)
        rows.append({"sentence1": " ".join(a), "sentence2": " ".join(rng.sample(b, len(b))), "score": shared})
    return rows


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, BertForMaskedLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return save_model_dir(tmp_path_factory, "mlm", BertForMaskedLM(tiny_bert_config(tokenizer, labels=False)),
                          tokenizer)


@pytest.fixture
def pairs(tmp_path) -> Path:
    data = tmp_path / "pairs"
    write_csv(data / "train.csv", scored_rows(96, seed=1))
    write_csv(data / "dev.csv", scored_rows(48, seed=2))
    return data


def scored_config(tmp_path, encoder, pairs, **task) -> dict:
    return {"model": {"name_or_path": encoder}, "task": {"type": "sentence-embedding", **task},
            "data": {"train_file": str(pairs / "train.csv"), "validation_file": str(pairs / "dev.csv"),
                     "text_column": "sentence1", "text_pair_column": "sentence2", "score_range": [0, 5],
                     "max_length": 32},
            "train": {"max_steps": 12, "per_device_train_batch_size": 16, "learning_rate": 3e-3, "precision": "fp32",
                      "eval_strategy": "steps", "eval_steps": 12, "save_strategy": "no", "logging_steps": 1,
                      "seed": 0},
            "output_dir": str(tmp_path / "run")}


def run(tmp_path, command: str, config: dict, *args: str):
    result = invoke(command, write_yaml(tmp_path / f"{command}.yaml", config), *args)
    return result


def test_scored_pairs_train_a_sentence_transformers_model(tmp_path, encoder, pairs):
    from sentence_transformers import SentenceTransformer

    result = run(tmp_path, "finetune", scored_config(tmp_path, encoder, pairs))
    assert result.exit_code == 0, result.output
    assert "scored pairs; loss cosent" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert -1 <= metrics["eval_spearman"] <= 1 and -1 <= metrics["eval_pearson"] <= 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "![similarity vs gold score (validation)](similarity_validation.png)" in report
    assert f"| validation | 48 | {metrics['eval_spearman']:.4f} |" in report
    assert (tmp_path / "run" / "similarity_validation.png").stat().st_size > 1000
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert sum(losses[-3:]) < sum(losses[:3])  # it learns
    model = SentenceTransformer(str(tmp_path / "run" / "model"), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling"]
    assert model.encode(["film story"]).shape == (1, 32)


def test_cosine_loss_and_the_score_range(tmp_path, encoder, pairs):
    result = run(tmp_path, "finetune", scored_config(tmp_path, encoder, pairs, loss="cosine"))
    assert result.exit_code == 0, result.output and "loss cosine" in result.output
    config = scored_config(tmp_path, encoder, pairs)
    config["data"]["score_range"] = [0, 4]  # rows scored 5 lie outside it
    bad = run(tmp_path, "finetune", config, "-o", tmp_path / "bad")
    assert bad.exit_code == 2 and "data.score_range" in bad.output and "outside [0, 4]" in bad.output
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("with_negatives", [False, True])
def test_pairs_and_triplets_with_in_batch_negatives(tmp_path, encoder, with_negatives):
    rows = [{"anchor": r["text"], "positive": r["text"].replace("film", "movie"),
             "negative": other["text"]} for r, other in zip(sentiment_rows(64, seed=3), sentiment_rows(64, seed=4))]
    write_csv(tmp_path / "train.csv", rows)
    config = {"model": {"name_or_path": encoder}, "task": {"type": "sentence-embedding"},
              "data": {"train_file": str(tmp_path / "train.csv"), "text_column": "anchor",
                       "text_pair_column": "positive", "max_length": 32,
                       **({"negative_column": "negative"} if with_negatives else {})},
              "train": {"max_steps": 4, "per_device_train_batch_size": 8, "precision": "fp32", "save_strategy": "no",
                        "eval_strategy": "no"},
              "output_dir": str(tmp_path / "run")}
    result = run(tmp_path, "finetune", config)
    assert result.exit_code == 0, result.output
    roles = "anchor / positive / negative" if with_negatives else "anchor / positive"
    assert f"{roles} rows; loss in-batch-negatives" in result.output
    # the batch's 7 other positives, and with hard negatives every row's negative too
    expected = "15 other candidates" if with_negatives else "7 other positives"
    assert f"in-batch negatives: each anchor against {expected} (its own batch)" in result.output


def test_in_batch_negative_loss_is_infonce(encoder):
    """The loss step: cross-entropy of each anchor's cosine similarities (over temperature) against every positive
    of the batch, the anchor's own positive the target (SimCSE's objective), computed by hand."""
    from transformers import AutoTokenizer

    from llmkit.models.embedding import build_sentence_model
    from llmkit.training.contrastive import ContrastiveTrainer, PairCollator, SentenceEncoder, make_loss

    model = SentenceEncoder(build_sentence_model(encoder, "mean")).eval()
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    rows = [{"anchor_input_ids": tokenizer(t)["input_ids"], "labels": 0.0} for t in
            ("the film was great", "a dull story", "lovely music", "poor acting")]
    batch = PairCollator(tokenizer, ["anchor"], views=2)(rows)
    loss_fn = make_loss("in-batch-negatives", model.sentence, temperature=0.05, gather=False)
    trainer = ContrastiveTrainer.__new__(ContrastiveTrainer)
    trainer.pair_loss = loss_fn
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        a, b = trainer.embeddings(model, batch)
        sims = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T / 0.05
        expected = torch.nn.functional.cross_entropy(sims, torch.arange(4))
    torch.testing.assert_close(loss, expected)


def test_simcse_pretraining_keeps_the_pooling_and_drops_the_mlp(tmp_path, encoder):
    from sentence_transformers import SentenceTransformer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in sentiment_rows(64, seed=5)) + "\n\n\n")
    config = {"model": {"name_or_path": encoder}, "data": {"train_file": str(corpus), "max_length": 32},
              "pretrain": {"objective": "contrastive", "pooling": "cls"},
              "train": {"max_steps": 4, "per_device_train_batch_size": 16, "precision": "fp32", "logging_steps": 1},
              "output_dir": str(tmp_path / "run")}
    result = run(tmp_path, "pretrain", config)
    assert result.exit_code == 0, result.output
    assert "cls pooling and an MLP over it in training" in result.output
    assert "each anchor against 15 other positives (its own batch)" in result.output
    assert "empty lines of the train data are not sentences; dropped" in result.output
    model = SentenceTransformer(str(tmp_path / "run" / "model"), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling"]  # no MLP saved
    assert json.loads((tmp_path / "run" / "model" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "cls"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["objective"] == "contrastive" and metrics["train_tokens"] > 0


def test_simcse_from_an_llmkit_mlm_run(tmp_path, tokenizer_dir, monkeypatch):
    """The pipeline pretrain objective: mlm -> pretrain objective: contrastive on that run."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in sentiment_rows(80, seed=6)) + "\n")
    mlm = {"model": {"from_config": {"family": "bert", "num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                     "max_position_embeddings": 64}},
           "tokenizer": {"name_or_path": tokenizer_dir}, "data": {"train_file": str(corpus)},
           "pretrain": {"objective": "mlm", "block_size": 32},
           "train": {"max_steps": 2, "precision": "fp32", "save_strategy": "no", "eval_strategy": "no"},
           "output_dir": str(tmp_path / "mlm")}
    assert run(tmp_path, "pretrain", mlm).exit_code == 0
    simcse = {"model": {"name_or_path": str(tmp_path / "mlm")}, "data": {"train_file": str(corpus), "max_length": 32},
              "pretrain": {"objective": "contrastive", "pooling": "mean"},
              "train": {"max_steps": 2, "per_device_train_batch_size": 8, "precision": "fp32"},
              "output_dir": str(tmp_path / "simcse")}
    cfg = write_yaml(tmp_path / "simcse.yaml", simcse)
    dry = invoke("pretrain", cfg, "--dry-run")
    assert dry.exit_code == 0 and "plan: 2 optimizer steps" in dry.output, dry.output
    assert not (tmp_path / "simcse").exists()
    result = invoke("pretrain", cfg)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "simcse" / "model" / "modules.json").is_file()
    monkeypatch.chdir(tmp_path)
    smoke = invoke("pretrain", cfg, "--smoke")
    assert smoke.exit_code == 0, smoke.output
    assert (tmp_path / "smoke" / "pretrain-simcse" / "model" / "modules.json").is_file()


@pytest.mark.parametrize(("change", "expected"), [
    ({"train": {"per_device_train_batch_size": 1}}, "train.per_device_train_batch_size: 1 leaves no other sentence"),
    ({"model": {"from_config": {"family": "bert", "num_layers": 1, "hidden_size": 32, "num_heads": 2}}},
     "model.from_config: contrastive pretraining learns sentence embeddings from a trained encoder"),
    ({"data": {"validation_file": "VALID"}}, "data.validation_file: contrastive pretraining has no validation loss"),
    ({"pretrain": {"block_size": 64}}, "pretrain.block_size: only applies to the packed-block objectives"),
    ({"pretrain": {"temperature": 0}}, "pretrain.temperature: must be > 0"),
    ({"data": {"train_file": "EMPTY"}}, "is empty (only blank lines)"),
])
def test_simcse_bad_input(tmp_path, encoder, change, expected):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in sentiment_rows(16, seed=7)) + "\n")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    config = {"model": {"name_or_path": encoder}, "data": {"train_file": str(corpus), "max_length": 32},
              "pretrain": {"objective": "contrastive"},
              "train": {"max_steps": 2, "per_device_train_batch_size": 8, "precision": "fp32"},
              "output_dir": str(tmp_path / "run")}
    paths = {"VALID": str(corpus), "EMPTY": str(tmp_path / "empty.txt")}
    for section, values in change.items():
        values = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in values.items()}
        config[section] = values if section == "model" else {**config.get(section, {}), **values}
        if section == "model":
            config["tokenizer"] = {"name_or_path": encoder}
    for extra in ((), ("--dry-run",)):
        result = run(tmp_path, "pretrain", config, *extra)
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("change", "expected"), [
    ({"data": {"text_pair_column": "missing"}}, "data.text_pair_column: 'missing' is not a column"),
    ({"task": {"loss": "cosent"}, "data": {"score_column": "nothing"}},
     "task.loss: cosent learns from scored pairs, but the training data has no 'nothing' column"),
    ({"task": {"temperature": -1}}, "task.temperature: must be > 0"),
    ({"data": {"score_range": [5, 0]}}, "data.score_range"),
])
def test_pair_bad_input(tmp_path, encoder, pairs, change, expected):
    config = scored_config(tmp_path, encoder, pairs)
    for section, values in change.items():
        config[section] = {**config[section], **values}
    for extra in ((), ("--dry-run",)):
        result = run(tmp_path, "finetune", config, *extra)
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_dry_run_and_smoke(tmp_path, encoder, pairs, monkeypatch):
    config = scored_config(tmp_path, encoder, pairs)
    dry = run(tmp_path, "finetune", config, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "data: train 96 examples" in dry.output and "plan: 12 optimizer steps" in dry.output
    assert not (tmp_path / "run").exists()
    monkeypatch.chdir(tmp_path)
    smoke = run(tmp_path, "finetune", config, "--smoke")
    assert smoke.exit_code == 0, smoke.output
    assert (tmp_path / "smoke" / "finetune-finetune" / "model" / "modules.json").is_file()


def test_sentence_embedding_resumes_mid_epoch_exactly(monkeypatch, tmp_path, encoder, pairs):
    """SIGINT at step 3 of 6, then train.resume=auto: the same losses and weights as an uninterrupted run."""
    from tests.training.test_resume import assert_same_weights, run_interrupted_and_resumed, weights

    config = scored_config(tmp_path, encoder, pairs)
    config["train"].update(max_steps=6, per_device_train_batch_size=8, eval_strategy="no", warmup_steps=2)
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "finetune", config, steps=6, half=3)
    assert_same_weights(weights(full / "model/model.safetensors"), weights(parts / "model/model.safetensors"))


def test_simcse_resumes_mid_epoch_exactly(monkeypatch, tmp_path, encoder):
    """Dropout draws are part of the state: the resumed SimCSE run sees the same views."""
    from tests.training.test_resume import assert_same_weights, run_interrupted_and_resumed, weights

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in sentiment_rows(64, seed=8)) + "\n")
    config = {"model": {"name_or_path": encoder}, "data": {"train_file": str(corpus), "max_length": 32},
              "pretrain": {"objective": "contrastive", "pooling": "cls"},
              "train": {"max_steps": 6, "per_device_train_batch_size": 8, "precision": "fp32", "logging_steps": 1,
                        "save_strategy": "no", "seed": 3}}
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, "pretrain", config, steps=6, half=3)
    assert_same_weights(weights(full / "model/model.safetensors"), weights(parts / "model/model.safetensors"))


@pytest.mark.xdist_group("multi-process")  # with tests/training/test_distributed.py: one launch at a time
def test_in_batch_negatives_are_gathered_across_two_processes(tmp_path, tokenizer_dir):
    """torchrun with 2 CPU processes of batch 4 = one process of batch 8: every anchor is scored against the
    positives of both processes (gathered), so the losses and weights match the one-process run. Plain SGD:
    under AdamW a weight whose gradient is near zero moves by about the learning rate in the direction of its
    gradient's sign, which float summation order can flip between the two runs (the weights were seen to differ
    past the tolerance once in the suite); SGD moves it in proportion to the gradient."""
    from transformers import AutoTokenizer, BertModel

    from tests.training.test_distributed import NO_DROPOUT_BERT, compare, run_both

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model_dir = tmp_path / "encoder"
    BertModel(tiny_bert_config(tokenizer, labels=False, **NO_DROPOUT_BERT)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rows = [{"anchor": r["text"], "positive": r["text"].replace("film", "movie")} for r in sentiment_rows(32, seed=9)]
    write_csv(tmp_path / "train.csv", rows)
    config = {"model": {"name_or_path": str(model_dir)}, "task": {"type": "sentence-embedding"},
              "data": {"train_file": str(tmp_path / "train.csv"), "text_column": "anchor",
                       "text_pair_column": "positive", "max_length": 32},
              "train": {"max_steps": 3, "precision": "fp32", "save_strategy": "no", "eval_strategy": "no",
                        "logging_steps": 1, "learning_rate": 0.5, "optim": "sgd", "seed": 0}}
    one, two = run_both(tmp_path, "finetune", config, batch=4)
    compare(one, two)


def test_eval_of_the_run_reproduces_its_correlations(tmp_path, encoder, pairs):
    """llmkit eval of the trained model on its own validation pairs gives the Spearman and Pearson its
    metrics.json holds (the same embeddings and the same cosine)."""
    config = scored_config(tmp_path, encoder, pairs)
    config["train"]["eval_strategy"] = "no"
    assert run(tmp_path, "finetune", config).exit_code == 0
    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    result = invoke("eval", tmp_path / "run", "--data", pairs / "dev.csv", "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert scored["task"] == "sts"
    for key in ("eval_spearman", "eval_pearson"):
        assert scored["metrics"][key] == pytest.approx(trained[key], abs=1e-6), key


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_an_adapter_trains_the_encoder_and_its_run_loads_evaluates_and_merges(tmp_path, encoder, pairs, method):
    """`llmkit adapter` on task.type sentence-embedding: the adapter wraps the transformer inside the sentence
    model, adapter/ holds only the adapter and the pooling it trained with; llmkit eval and llmkit.load_model read
    the run as base + adapter (the same correlations as the run's own metrics); a LoRA run merges into a
    sentence-transformers model with the same embeddings."""
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    import llmkit
    from llmkit.models.embedding import build_sentence_model

    options = {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]} if method == "lora" else {}
    config = {**scored_config(tmp_path, encoder, pairs, pooling="cls"), "adapter": {"method": method, **options}}
    config["train"].update(eval_strategy="no", learning_rate=1e-2)
    result = run(tmp_path, "adapter", config)
    assert result.exit_code == 0, result.output
    assert f"adapter: {method}" in result.output
    adapter_dir = tmp_path / "run" / "adapter"
    meta = json.loads((adapter_dir / "llmkit_adapter.json").read_text())
    assert meta["task"] == "sentence-embedding" and meta["sentence"] == {"pooling": "cls", "max_seq_length": 32}
    assert not (tmp_path / "run" / "model").exists()
    weights = load_file(next(adapter_dir.rglob("*.safetensors")))
    assert weights and all(("lora_" in k) if method == "lora" else ("bottleneck" in k or "adapter" in k)
                           for k in weights), sorted(weights)[:4]

    trained = json.loads((tmp_path / "run" / "metrics.json").read_text())
    scored = invoke("eval", tmp_path / "run", "--data", pairs / "dev.csv", "-o", tmp_path / "eval")
    assert scored.exit_code == 0, scored.output
    evaluated = json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]
    assert evaluated["eval_spearman"] == pytest.approx(trained["eval_spearman"], abs=1e-6)

    model, _ = llmkit.load_model(tmp_path / "run")
    sentences = ["film story music", "the acting was dull"]
    adapted = model.encode(sentences, convert_to_tensor=True)
    plain = build_sentence_model(str(encoder), "cls")
    assert not torch.allclose(adapted, plain.encode(sentences, convert_to_tensor=True), atol=1e-4)
    if method == "bottleneck":
        merged = invoke("adapter", "merge", tmp_path / "run", "--output", tmp_path / "merged")
        assert merged.exit_code == 2 and "cannot be folded" in merged.output
        return
    merged = invoke("adapter", "merge", tmp_path / "run", "--output", tmp_path / "merged")
    assert merged.exit_code == 0, merged.output
    standalone = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    assert [type(m).__name__ for m in standalone] == ["Transformer", "Pooling"]
    torch.testing.assert_close(standalone.encode(sentences, convert_to_tensor=True), adapted, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("case", "expected"), [
    ("score not a number", "data.score_column: 1 row(s) of the train data"),
    ("one text column", "data.text_pair_column: sentence-embedding pairs need a second text"),
    ("batch of one", "train.per_device_train_batch_size: 1 leaves no other sentence"),
    ("soft prompt", "prompt_tuning does not support task.type sentence-embedding"),
])
def test_pair_data_and_adapter_bad_input(tmp_path, encoder, pairs, case, expected):
    """The refusals docs/commands/finetune.md lists, each before a run directory exists (with and without
    --dry-run)."""
    config = scored_config(tmp_path, encoder, pairs)
    command = "finetune"
    if case == "score not a number":
        write_csv(pairs / "train.csv", [{**scored_rows(1, seed=5)[0], "score": "high"}, *scored_rows(8, seed=6)])
    elif case == "one text column":
        write_csv(pairs / "train.csv", [{"sentence1": r["sentence1"]} for r in scored_rows(8, seed=6)])
        config["data"].pop("text_pair_column")
        config["data"]["validation_file"] = None
    elif case == "batch of one":
        write_csv(pairs / "train.csv", [{"sentence1": r["sentence1"], "sentence2": r["sentence2"]}
                                        for r in scored_rows(8, seed=6)])
        config["data"]["validation_file"] = None
        config["train"].update(per_device_train_batch_size=1, eval_strategy="no")
    else:
        command = "adapter"
        config["adapter"] = {"method": "prompt_tuning", "num_virtual_tokens": 4}
    for extra in ((), ("--dry-run",)):
        result = run(tmp_path, command, config, *extra)
        assert result.exit_code == 2, result.output
        assert expected in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def pickled_encoder(tmp_path_factory, tokenizer_dir) -> str:
    """A BERT whose only weights are a torch pickle (pytorch_model.bin), like an old hub checkpoint."""
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertModel(tiny_bert_config(tokenizer, labels=False))
    out = tmp_path_factory.mktemp("pickled")
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return str(out)


def simcse_config(tmp_path, encoder) -> dict:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in sentiment_rows(32, seed=8)) + "\n")
    return {"model": {"name_or_path": encoder}, "data": {"train_file": str(corpus), "max_length": 32},
            "pretrain": {"objective": "contrastive", "pooling": "mean"},
            "train": {"max_steps": 2, "per_device_train_batch_size": 8, "precision": "fp32", "save_strategy": "no"},
            "output_dir": str(tmp_path / "run")}


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_pickle_weights_are_refused_unless_allowed(tmp_path, pickled_encoder, pairs, command):
    """Sentence models load safetensors only, as every other model does: model.allow_pickle opens the door."""
    config = scored_config(tmp_path, pickled_encoder, pairs) if command == "finetune" else \
        simcse_config(tmp_path, pickled_encoder)
    config["train"]["max_steps"] = 2
    for extra in ((), ("--dry-run",)):
        refused = run(tmp_path, command, config, *extra)
        assert refused.exit_code == 2, refused.output
        assert "pytorch_model.bin is a pickle file" in refused.output
        assert "set model.allow_pickle=true" in refused.output and "Traceback" not in refused.output
    assert not (tmp_path / "run").exists()
    config["model"]["allow_pickle"] = True
    result = run(tmp_path, command, config)
    assert result.exit_code == 0, result.output
    assert "loading pickle weights" in result.output and (tmp_path / "run" / "model" / "modules.json").is_file()


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_revision_and_attention_reach_the_sentence_model(tmp_path, encoder, pairs, monkeypatch, command):
    """model.revision and model.attn_implementation go to the encoder's from_pretrained as on every other path; an
    unknown attention implementation is refused, naming the key."""
    from sentence_transformers.sentence_transformer import modules

    seen = {}
    real = modules.Transformer

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(modules, "Transformer", spy)
    config = scored_config(tmp_path, encoder, pairs) if command == "finetune" else simcse_config(tmp_path, encoder)
    config["model"].update(revision="v1", attn_implementation="eager")
    result = run(tmp_path, command, config, "--dry-run")
    assert result.exit_code == 0, result.output
    assert seen["model_kwargs"]["revision"] == "v1" and seen["config_kwargs"]["revision"] == "v1"
    assert seen["model_kwargs"]["attn_implementation"] == "eager" and seen["model_kwargs"]["use_safetensors"]
    config["model"]["attn_implementation"] = "flash_attn"
    bad = run(tmp_path, command, config, "--dry-run")
    assert bad.exit_code == 2 and "model.attn_implementation: 'flash_attn' is not an attention" in bad.output


def test_freeze_settings_apply_to_contrastive_pretraining(tmp_path, encoder):
    """model.freeze_embeddings / freeze_layers: fewer trainable parameters, and the frozen weights stay as they were."""
    from safetensors.torch import load_file

    base = load_file(Path(encoder) / "model.safetensors")
    config = simcse_config(tmp_path, encoder)
    config["model"].update(freeze_embeddings=True, freeze_layers=1)
    config["train"]["learning_rate"] = 1e-2
    result = run(tmp_path, "pretrain", config)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    trained = load_file(tmp_path / "run" / "model" / "model.safetensors")
    frozen = [k for k in trained if k.startswith(("embeddings.", "encoder.layer.0."))]
    assert len(frozen) > 10
    for name in frozen:
        assert torch.equal(trained[name], base["bert." + name]), name
    for name in ("encoder.layer.1.attention.self.query.weight", "encoder.layer.1.output.dense.weight"):
        assert not torch.equal(trained[name], base["bert." + name]), name  # the rest trains
    assert metrics["trainable_params"] == metrics["total_params"] - sum(trained[k].numel() for k in frozen)


def test_score_range_defaults_to_zero_one_for_training(tmp_path, encoder):
    """data.score_range defaults to [0, 1] for sentence-embedding training: scores of 0-5 without it are refused
    (exit 2, naming data.score_range, the rows and the default range) before a run directory exists; with
    data.score_range: [0, 5] the same file trains."""
    rows = scored_rows(8, seed=11)
    for row, score in zip(rows, [0, 1, 0.5, 3, 1, 5, 0, 2]):
        row["score"] = score
    write_csv(tmp_path / "train.csv", rows)
    config = {"model": {"name_or_path": encoder}, "task": {"type": "sentence-embedding"},
              "data": {"train_file": str(tmp_path / "train.csv"), "text_column": "sentence1",
                       "text_pair_column": "sentence2", "max_length": 32},
              "train": {"max_steps": 1, "per_device_train_batch_size": 8, "precision": "fp32", "save_strategy": "no",
                        "eval_strategy": "no"},
              "output_dir": str(tmp_path / "run")}
    refused = run(tmp_path, "finetune", config)
    assert refused.exit_code == 2, refused.output
    output = " ".join(refused.output.split())
    assert "data.score_range: 3 row(s) of the train data" in output, output
    assert "outside [0, 1] (rows 4, 6, 8)" in output and "the default range [0, 1]" in output, output
    assert "Traceback" not in output and not (tmp_path / "run").exists()
    config["data"]["score_range"] = [0, 5]
    result = run(tmp_path, "finetune", config)
    assert result.exit_code == 0, result.output
    assert "scored pairs; loss cosent" in result.output
    assert (tmp_path / "run" / "model" / "modules.json").is_file()
