"""Shared fixtures: offline environment, a WordPiece tokenizer trained here, tiny data files.

Nothing is downloaded: models are built from configs (`model.from_config`) and
the tokenizer is trained on the fly with the `tokenizers` library.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# `precision: auto` on a CPU with bf16 instructions times bf16 against fp32 matmuls once per machine; tests pin the
# answer (fp32) so that every machine runs the same numerics. tests/config/test_cpu_precision.py unsets it.
os.environ.setdefault("LLMKIT_CPU_BF16", "0")

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker gets its share of the cores for
# torch's intra-op threads, so workers do not oversubscribe the machine; subprocesses inherit the setting.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

POSITIVE = ["great", "wonderful", "superb", "lovely", "brilliant", "excellent", "charming", "delightful"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "poor", "dull", "clumsy", "tedious"]
NEUTRAL = ["the", "film", "story", "acting", "was", "really", "quite", "plot", "music", "and", "a", "it", "felt"]


def sentiment_rows(n: int, seed: int, labels=("negative", "positive")) -> list[dict]:
    """Short synthetic reviews whose label follows the sentiment words they contain."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % 2]
        words = POSITIVE if label == labels[1] else NEGATIVE
        text = " ".join(rng.sample(NEUTRAL, 4) + [rng.choice(words), rng.choice(words)] + rng.sample(NEUTRAL, 2))
        rows.append({"text": text, "label": label})
    return rows


def train_on_sentiment(model, tokenizer, steps: int = 40) -> None:
    """A few AdamW steps of a sequence classifier on synthetic reviews (label 1 = positive), so a test's
    "pretrained" model already tells the sentiment words apart."""
    import torch

    rows = sentiment_rows(128, seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch_rows = rows[(step * 16) % 128:(step * 16) % 128 + 16]
        batch = tokenizer([r["text"] for r in batch_rows], return_tensors="pt", padding=True)
        labels = torch.tensor([int(r["label"] == "positive") for r in batch_rows])
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def write_csv(path: Path, rows: list[dict], delimiter: str = ",", header: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        if header:
            writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own llmkit data cache (and HF module cache) so tests never share state."""
    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path_factory.mktemp("llmkit-cache")))


def train_tokenizer(out: Path, vocab_size: int = 200) -> str:
    """Train a small WordPiece tokenizer (BERT-style special tokens) on the fixture vocabulary; save it to `out`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [r["text"] for r in sentiment_rows(400, seed=0)] + [" ".join(POSITIVE + NEGATIVE + NEUTRAL)]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=128).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    """The tests' tokenizer: WordPiece, 200 tokens, trained on the fixture vocabulary."""
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CHAT_SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]


def build_chat_tokenizer(chat_template: str | None):
    """A byte-level BPE tokenizer (eos <|im_end|>, pad <pad>) with an optional chat template, for causal LMs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [r["text"] for r in sentiment_rows(300, seed=0)] + [" ".join(POSITIVE + NEGATIVE + NEUTRAL)]
    corpus += ["Instruction Response user assistant system hello world what is the answer"] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=CHAT_SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")
    out.chat_template = chat_template
    return out


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory) -> str:
    """build_chat_tokenizer(CHATML), saved."""
    out = tmp_path_factory.mktemp("chat-tokenizer")
    build_chat_tokenizer(CHATML).save_pretrained(out)
    return str(out)


@pytest.fixture
def sentiment_data(tmp_path) -> Path:
    """train.csv / dev.csv / test.csv with text,label columns (the seeds' CSV shape)."""
    d = tmp_path / "data"
    write_csv(d / "train.csv", sentiment_rows(64, seed=1))
    write_csv(d / "dev.csv", sentiment_rows(32, seed=2))
    write_csv(d / "test.csv", sentiment_rows(32, seed=3))
    return d


@pytest.fixture
def tiny_config(tmp_path, tokenizer_dir, sentiment_data) -> dict:
    """A finetune config for a 2-layer BERT built from config, as a plain dict (tests write it as YAML)."""
    return {
        "model": {"from_config": {"family": "bert", "num_layers": 2, "hidden_size": 32, "num_heads": 2,
                                  "intermediate_size": 64, "max_position_embeddings": 64}},
        "tokenizer": {"name_or_path": tokenizer_dir},
        "task": {"type": "sequence-classification"},
        "data": {"train_file": str(sentiment_data / "train.csv"), "validation_file": str(sentiment_data / "dev.csv"),
                 "max_length": 32},
        "train": {"num_train_epochs": 8, "learning_rate": 2e-3, "per_device_train_batch_size": 8,
                  "per_device_eval_batch_size": 32, "logging_steps": 2, "seed": 0, "precision": "fp32",
                  "save_strategy": "epoch", "disable_tqdm": True},
        "output_dir": str(tmp_path / "run"),
    }


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
