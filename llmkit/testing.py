"""Helpers for your own test suites: tiny models with tokenizers built offline, and configs run in smoke mode.

    from llmkit.testing import smoke_run, tiny_model

    def test_my_config_trains(tmp_path):
        tiny_model("bert", task="sequence-classification", path=tmp_path / "bert")
        metrics = smoke_run("configs/my-experiment.yaml", overrides=[f"model.name_or_path={tmp_path / 'bert'}"],
                            output_dir=tmp_path / "run")
        assert "eval_accuracy" in metrics

Nothing here downloads anything: `tiny_model` trains its tokenizer with the `tokenizers` library on a small
built-in corpus (or your texts) and builds the model from a config; `smoke_run` runs a config exactly as
`llmkit COMMAND CONFIG --smoke` does (tiny copies of the config's own models, built from their configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit import commands, smoke_runner
from llmkit.errors import UserError
from llmkit.models.loading import FAMILIES as CONFIG_CLASSES

FAMILIES = ("bert", "gpt2", "llama")
TASKS = ("sequence-classification", "token-classification", "causal-lm", "masked-lm", "base")
CORPUS = [
    "the film was great and the acting was wonderful",
    "a dull story with terrible acting and a boring plot",
    "what a lovely and charming little movie",
    "the music was awful and the ending was poor",
    "an excellent cast in a brilliant thriller",
    "Paris is the capital of France and Berlin is the capital of Germany",
    "Question: what is two plus two? Answer: four",
    "The quick brown fox jumps over the lazy dog.",
    "Instruction: summarise the text. Response: a short summary.",
    "user assistant system hello world it was great terrible good bad",
]


def tiny_tokenizer(family: str = "bert", texts: list[str] | None = None, vocab_size: int = 300,
                   path: str | Path | None = None):
    """A tokenizer made here, in well under a second and the same every time: for bert, an uncased WordPiece
    vocabulary of BERT's special tokens, every character and the most frequent words of the texts; for gpt2 and
    llama, byte-level BPE trained with the `tokenizers` library, `<|endoftext|>` as EOS and `<pad>`. Saved to
    `path` when given."""
    _check_family(family)
    corpus = list(texts or CORPUS)
    if family == "bert":
        tokenizer = _wordpiece(corpus, vocab_size)
    else:
        from llmkit.config.sections import TokenizerTrainSpec
        from llmkit.models.tokenizer_training import train_tokenizer

        spec = TokenizerTrainSpec(type="bpe", vocab_size=vocab_size, min_frequency=1, max_length=512)
        tokenizer = train_tokenizer(spec, lambda: [corpus * 3], "clm")
    if path is not None:
        tokenizer.save_pretrained(str(path))
    return tokenizer


def _wordpiece(corpus: list[str], vocab_size: int):
    """WordPiece from a fixed vocabulary: every ASCII letter, digit and punctuation mark and the corpus's own
    characters (alone and as ##continuations), then its words, most frequent first. The WordPiece trainer's
    tie-breaking varies from run to run; this does not."""
    import string
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in corpus for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    ascii_chars = set(string.ascii_lowercase + string.digits + string.punctuation)
    chars = sorted({c for word in counts for c in word} | ascii_chars)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    tokens = list(dict.fromkeys(specials + chars + [f"##{c}" for c in chars] + words))
    vocab = {t: i for i, t in enumerate(tokens[:max(vocab_size, len(specials) + 2 * len(chars))])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def tiny_model(family: str = "bert", task: str = "sequence-classification", path: str | Path | None = None,
               num_labels: int = 2, tokenizer: Any = None, layers: int = 2, hidden_size: int = 64, heads: int = 4,
               seed: int = 0, **config: Any):
    """(model, tokenizer): a randomly initialised 2-layer model of `family` with the head of `task`, and a tokenizer
    trained offline (or yours). With `path`, both are saved there like a downloaded checkpoint, so a config can
    name it in model.name_or_path.

    Args:
        family: bert, gpt2 or llama.
        task: sequence-classification, token-classification, causal-lm, masked-lm or base (no head).
        path: Where to save the model and tokenizer (optional).
        num_labels: Classes of a classification head.
        tokenizer: Use this tokenizer instead of training one.
        layers, hidden_size, heads: The model's size.
        seed: torch seed for the random weights.
        config: More fields of the family's transformers config class.
    """
    import torch
    import transformers


    _check_family(family)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    tokenizer = tokenizer or tiny_tokenizer(family)
    class_name, names = CONFIG_CLASSES[family]
    sizes = {names["num_layers"]: layers, names["hidden_size"]: hidden_size, names["num_heads"]: heads,
             names["intermediate_size"]: 2 * hidden_size, names["max_position_embeddings"]: 512}
    special = {k: getattr(tokenizer, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    labels = {}
    if task in ("sequence-classification", "token-classification"):
        labels = {"num_labels": num_labels, "id2label": {i: f"LABEL_{i}" for i in range(num_labels)},
                  "label2id": {f"LABEL_{i}": i for i in range(num_labels)}}
    model_config = getattr(transformers, class_name)(vocab_size=len(tokenizer), **sizes, **special, **labels,
                                                     **config)
    auto = {"sequence-classification": "AutoModelForSequenceClassification",
            "token-classification": "AutoModelForTokenClassification", "causal-lm": "AutoModelForCausalLM",
            "masked-lm": "AutoModelForMaskedLM", "base": "AutoModel"}[task]
    torch.manual_seed(seed)
    model = getattr(transformers, auto).from_config(model_config)
    if path is not None:
        from llmkit.models.gguf import _no_progress_bars

        Path(path).mkdir(parents=True, exist_ok=True)
        with _no_progress_bars():
            model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    return model, tokenizer


def smoke_run(config: str | Path | dict, command: str | None = None, overrides: list[str] | tuple = (),
              output_dir: str | Path | None = None) -> dict:
    """Run a config in smoke mode, in this process, as `llmkit COMMAND CONFIG --smoke` does; return its metrics.

    Args:
        config: A YAML file, or the config as a dict (relative paths in it are read from the current directory).
        command: pretrain, finetune, adapter, prompt, distill or eval; default: inferred from the config's
            sections (or its folder's name), as `llmkit config validate` does.
        overrides: Dotted key=value overrides, e.g. ["data.max_length=32"].
        output_dir: The run directory (default: smoke/<command>-<config name>, replaced every time).

    Raises:
        llmkit.errors.UserError: the config fails as it would in the real run; str(e) is the CLI's message.
    """
    if isinstance(config, dict):
        command = command or commands.infer(config)
        if command is None:
            raise UserError(f"smoke_run: cannot tell which command this config is for; pass command= "
                            f"({', '.join(commands.COMMANDS)}).")
        cfg = commands.load_dict(command, config, list(overrides))
        return smoke_runner.run_loaded(command, cfg, None, Path(output_dir) if output_dir else None)
    path = Path(config)
    command = commands.infer_command(path, command)
    return smoke_runner.run_config(command, path, list(overrides), Path(output_dir) if output_dir else None,
                                   announce=False)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
