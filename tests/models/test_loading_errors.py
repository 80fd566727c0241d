"""Bad model and tokenizer folders: a clear message naming the key, the file and the fix, exit code 2, no traceback.

Each broken folder is made from a tiny saved BERT classifier (a file instead of a folder, no config.json, a cut
safetensors file, a missing shard, a tokenizer too big for the embeddings, ...) and fed to the real CLI where a
command reaches it, else to the loading functions.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import write_yaml
from tests.recipes.helpers import invoke, save_model_dir, tiny_bert_config


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer BERT sentiment classifier saved with its tokenizer (156 tokens), like a downloaded checkpoint."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return Path(save_model_dir(tmp_path_factory, "cls", BertForSequenceClassification(tiny_bert_config(tokenizer)),
                               tokenizer))


@pytest.fixture(scope="module")
def big_tokenizer_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """The tests' tokenizer with 50 added tokens (206): more than the tiny model's 156 embedding rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_tokens([f"extra{i}" for i in range(50)])
    out = tmp_path_factory.mktemp("big-tokenizer")
    tokenizer.save_pretrained(out)
    return out


def copy_model(model_dir: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name not in skip:
            shutil.copy(f, target / f.name)
    return target


def fails(*args, expect: tuple[str, ...] = ()) -> str:
    """Run the CLI; it must exit 2 with no traceback and a message holding every `expect` text."""
    result = invoke(*args)
    out = result.output
    assert result.exit_code == 2, f"exit code {result.exit_code} ({result.exception!r}):\n{out}"
    assert "Traceback" not in out, out
    for text in expect:
        assert text in out, f"{text!r} not in the message:\n{out}"
    return out


def finetune_fails(tmp_path: Path, tiny_config: dict, model: dict, tokenizer: str | Path | None = None,
                   expect: tuple[str, ...] = ()) -> str:
    """`llmkit finetune` with this model section (and tokenizer.name_or_path, else the model's own tokenizer)
    fails cleanly and leaves no run directory."""
    cfg = copy.deepcopy(tiny_config)
    cfg["model"] = model
    if tokenizer is None:
        del cfg["tokenizer"]
    else:
        cfg["tokenizer"] = {"name_or_path": str(tokenizer)}
    out = fails("finetune", write_yaml(tmp_path / "finetune.yaml", cfg), expect=expect)
    assert not Path(cfg["output_dir"]).exists()
    return out


# ---------------------------------------------------------------- 1. a file where a folder is expected


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_model_path_is_a_file_of_the_model(tmp_path, tiny_config, model_dir, name):
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(model_dir / name)},
                   expect=("model.name_or_path", str(model_dir / name), "is a file", "model directory",
                           f"Point it at the folder that holds the file: {model_dir}"))


def test_model_path_is_some_other_file(tmp_path, tiny_config):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(notes)},
                   expect=("model.name_or_path", str(notes), "is a file", "model directory", "hub id"))


def test_model_path_is_a_gguf_file_points_to_gguf_file(tmp_path, tiny_config):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(gguf)},
                   expect=("model.name_or_path", "is a file", f"set model.gguf_file: {gguf}"))


def test_tokenizer_path_is_a_tokenizer_file(tmp_path, tiny_config, model_dir, tokenizer_dir):
    tokenizer_json = Path(tokenizer_dir) / "tokenizer.json"
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(model_dir)}, tokenizer=tokenizer_json,
                   expect=("tokenizer.name_or_path", str(tokenizer_json), "is a file", "tokenizer directory",
                           f"the folder that holds it: {tokenizer_dir}"))


# ---------------------------------------------------------------- 2. folders without config.json / tokenizer


def test_empty_model_dir(tmp_path, tiny_config):
    empty = tmp_path / "empty"
    empty.mkdir()
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(empty)},
                   expect=("model.name_or_path", f"no config.json in {empty}", "it is empty", "save_pretrained"))


def test_model_dir_with_weights_only(tmp_path, tiny_config, model_dir):
    only = copy_model(model_dir, tmp_path / "weights-only", skip=("config.json",))
    out = finetune_fails(tmp_path, tiny_config, {"name_or_path": str(only)},
                         expect=("model.name_or_path", f"no config.json in {only}", "model.safetensors",
                                 "tokenizer.json"))
    assert "hub" not in out.split("model.safetensors")[0]  # not a hub lookup error


def test_tokenizer_dir_as_model(tmp_path, tiny_config, tokenizer_dir):
    finetune_fails(tmp_path, tiny_config, {"name_or_path": tokenizer_dir},
                   expect=("model.name_or_path", "no config.json", "tokenizer files only", "tokenizer.name_or_path"))


def test_run_directory_as_model_points_to_its_model_folder(tmp_path, tiny_config, model_dir):
    run = tmp_path / "some-run"
    copy_model(model_dir, run / "model")
    (run / "metrics.json").write_text("{}\n")
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(run)},
                   expect=("model.name_or_path", "no config.json", f"point model.name_or_path at {run / 'model'}"))


def test_checkpoints_folder_as_model_points_to_the_newest_checkpoint(tmp_path, tiny_config, model_dir):
    """checkpoint-2105 is newer than checkpoint-2000 (and checkpoint-75 older than checkpoint-100): numbers in the
    names compare as numbers, not as text."""
    checkpoints = tmp_path / "an-earlier-run" / "checkpoints"
    for step in (75, 100, 2000, 2105):
        copy_model(model_dir, checkpoints / f"checkpoint-{step}")
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(checkpoints)},
                   expect=("model.name_or_path", "Its newest checkpoint checkpoint-2105/",
                           f"point model.name_or_path at {checkpoints / 'checkpoint-2105'}"))


def test_tokenizer_dir_without_tokenizer_files(tmp_path, tiny_config, model_dir):
    bare = copy_model(model_dir, tmp_path / "no-tokenizer", skip=("tokenizer.json", "tokenizer_config.json"))
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(model_dir)}, tokenizer=bare,
                   expect=("tokenizer.name_or_path", f"no tokenizer files in {bare}", "config.json",
                           "leave it unset"))


def test_model_dir_without_tokenizer_files(tmp_path, tiny_config, model_dir):
    bare = copy_model(model_dir, tmp_path / "no-tokenizer", skip=("tokenizer.json", "tokenizer_config.json"))
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(bare)},
                   expect=("model.name_or_path", f"the model folder {bare} has no tokenizer files",
                           "tokenizer.name_or_path"))


def test_eval_config_model_without_config_json(tmp_path, model_dir, sentiment_data):
    only = copy_model(model_dir, tmp_path / "weights-only", skip=("config.json",))
    cfg = {"model": {"name_or_path": str(only)}, "data": {"validation_file": str(sentiment_data / "dev.csv")},
           "output_dir": str(tmp_path / "eval")}
    fails("eval", write_yaml(tmp_path / "eval.yaml", cfg),
          expect=("model.name_or_path", f"no config.json in {only}", "model.safetensors"))
    assert not (tmp_path / "eval").exists()


def test_distill_teacher_without_config_json(tmp_path, model_dir, sentiment_data):
    only = copy_model(model_dir, tmp_path / "teacher", skip=("config.json",))
    cfg = {"distill": {"teacher": str(only), "student": {"from_teacher": {"keep_layers": [0]}}},
           "data": {"train_file": str(sentiment_data / "train.csv"), "max_length": 32},
           "train": {"max_steps": 1, "precision": "fp32", "save_strategy": "no", "eval_strategy": "no"},
           "output_dir": str(tmp_path / "run")}
    out = fails("distill", write_yaml(tmp_path / "distill.yaml", cfg),
                expect=("distill.teacher", f"no config.json in {only}", "model.safetensors"))
    assert "distill.teacher_name_or_path" not in out
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 3. truncated or corrupt weights


def _cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _random(data: bytes) -> bytes:
    return os.urandom(4096)


def _header_claims_too_much(data: bytes) -> bytes:
    return struct.pack("<Q", 10**9) + data[8:]


def _empty(data: bytes) -> bytes:
    return b""


def _extra_bytes(data: bytes) -> bytes:
    return data + bytes(100)


@pytest.mark.parametrize("damage, words", [
    (_cut_in_half, ("is truncated", "its header describes")),
    (_random, ("truncated or corrupt",)),
    (_header_claims_too_much, ("truncated or corrupt", "claims 1000000000 bytes")),
    (_empty, ("is empty",)),
    (_extra_bytes, ("is corrupt", "100 bytes beyond")),
], ids=["cut-in-half", "random-bytes", "header-claims-too-much", "empty", "extra-bytes"])
def test_damaged_safetensors(tmp_path, tiny_config, model_dir, damage, words):
    broken = copy_model(model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(broken)},
                   expect=("model.name_or_path", str(weights), *words, "Download it again"))


def test_eval_short_form_on_truncated_weights(tmp_path, model_dir, sentiment_data):
    broken = copy_model(model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(_cut_in_half(weights.read_bytes()))
    fails("eval", broken, "--data", sentiment_data / "dev.csv", "--output-dir", tmp_path / "eval",
          expect=("model.name_or_path", str(weights), "is truncated", "Download it again"))
    assert not (tmp_path / "eval").exists()


def _shard(model_dir: Path, target: Path, keep_second: bool) -> Path:
    """The model saved as two shards with an index; the second shard dropped unless `keep_second`."""
    from safetensors.torch import load_file, save_file

    copy_model(model_dir, target, skip=("model.safetensors",))
    tensors = load_file(str(model_dir / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        if keep_second or shard.startswith("model-00001"):
            save_file({k: tensors[k] for k in keys}, str(target / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    return target


def test_sharded_model_loads(tmp_path, model_dir, tokenizer_dir):
    """The shard fixture itself is a valid checkpoint."""
    from transformers import AutoTokenizer

    from llmkit.config.sections import ModelConfig
    from llmkit.models.loading import load_model

    sharded = _shard(model_dir, tmp_path / "sharded", keep_second=True)
    model, missing = load_model("AutoModelForSequenceClassification", ModelConfig(name_or_path=str(sharded)),
                                AutoTokenizer.from_pretrained(tokenizer_dir))
    assert not missing


def test_sharded_model_with_a_missing_shard(tmp_path, tiny_config, model_dir):
    sharded = _shard(model_dir, tmp_path / "sharded", keep_second=False)
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(sharded)},
                   expect=("model.name_or_path", "model.safetensors.index.json", str(sharded),
                           "model-00002-of-00002.safetensors", "is missing", "Download the model again"))


def test_model_dir_without_weights(tmp_path, tiny_config, model_dir):
    bare = copy_model(model_dir, tmp_path / "no-weights", skip=("model.safetensors",))
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(bare)},
                   expect=("model.name_or_path", f"no weights in {bare}", "config.json", "Download the model again"))


def test_library_loader_on_truncated_weights(tmp_path, model_dir):
    import llmkit
    from llmkit.errors import UserError

    broken = copy_model(model_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(_cut_in_half(weights.read_bytes()))
    with pytest.raises(UserError, match="model.safetensors is truncated"):
        llmkit.load_model(str(broken))


def test_library_loader_on_a_model_without_tokenizer(tmp_path, model_dir):
    import llmkit
    from llmkit.errors import UserError

    bare = copy_model(model_dir, tmp_path / "bare", skip=("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(UserError, match="reference: the model folder .* has no tokenizer files"):
        llmkit.load_model(str(bare))


def test_adapter_run_with_truncated_adapter_weights(tmp_path, model_dir, sentiment_data):
    """An adapter folder (as `llmkit adapter` saves it) whose adapter_model.safetensors was cut short."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmkit.models.adapters import save_adapter

    base = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    adapter = tmp_path / "run" / "adapter"
    save_adapter(model, AutoTokenizer.from_pretrained(model_dir), adapter, {
        "method": "lora", "name": "default", "task": "sequence-classification",
        "architecture": "BertForSequenceClassification", "base_model": str(model_dir),
        "base_model_path": str(model_dir), "revision": None, "task_config": {"num_labels": 2}, "pad_token_id": 0})
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(_cut_in_half(weights.read_bytes()))
    fails("eval", adapter, "--data", sentiment_data / "dev.csv", "--output-dir", tmp_path / "eval",
          expect=("model.name_or_path", f"the adapter in {adapter}", str(weights), "is truncated"))


# ---------------------------------------------------------------- 4. the tokenizer must fit the embeddings


def test_tokenizer_larger_than_embeddings(tmp_path, tiny_config, model_dir, big_tokenizer_dir):
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(model_dir)}, tokenizer=big_tokenizer_dir,
                   expect=("tokenizer.name_or_path: the tokenizer has 206 tokens but the model's embedding table "
                           "has 156 rows", "use the model's own tokenizer"))


def test_model_saved_with_a_larger_tokenizer(tmp_path, tiny_config, model_dir, big_tokenizer_dir):
    mixed = copy_model(model_dir, tmp_path / "mixed", skip=("tokenizer.json", "tokenizer_config.json"))
    for f in big_tokenizer_dir.iterdir():
        shutil.copy(f, mixed / f.name)
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(mixed)},
                   expect=("model.name_or_path: the tokenizer has 206 tokens", "156 rows", "resize_token_embeddings"))


def test_from_config_vocab_smaller_than_tokenizer(tmp_path, tiny_config, tokenizer_dir):
    model = copy.deepcopy(tiny_config["model"])
    model["from_config"]["vocab_size"] = 100
    finetune_fails(tmp_path, tiny_config, model, tokenizer=tokenizer_dir,
                   expect=("model.from_config.vocab_size", "100", "156 tokens"))


def test_from_config_extra_vocab_smaller_than_tokenizer(tmp_path, tiny_config, tokenizer_dir):
    model = copy.deepcopy(tiny_config["model"])
    model["from_config"]["extra"] = {"vocab_size": 100}
    finetune_fails(tmp_path, tiny_config, model, tokenizer=tokenizer_dir,
                   expect=("model.from_config.vocab_size", "156 tokens", "100 rows", "at least 156"))


def test_smaller_tokenizer_than_embeddings_is_fine(tokenizer_dir):
    """A padded vocabulary (more rows than tokens) is common and loads."""
    from transformers import AutoTokenizer

    from llmkit.config.sections import FromConfigSpec, ModelConfig
    from llmkit.models.loading import check_vocabulary_fits, load_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    spec = FromConfigSpec(family="bert", num_layers=1, hidden_size=32, num_heads=2, vocab_size=len(tokenizer) + 50)
    model, _ = load_model("AutoModelForSequenceClassification", ModelConfig(from_config=spec), tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) + 50
    check_vocabulary_fits(model, tokenizer)


# ---------------------------------------------------------------- 5. attention implementations


@pytest.mark.parametrize("value", ["foo", "SDPA"])
def test_unknown_attention_implementation(tmp_path, tiny_config, tokenizer_dir, value):
    model = {**tiny_config["model"], "attn_implementation": value}
    finetune_fails(tmp_path, tiny_config, model, tokenizer=tokenizer_dir,
                   expect=("model.attn_implementation", repr(value), "Available here: eager, sdpa",
                           "leave it unset"))


def test_flash_attention_not_installed(tmp_path, tiny_config, model_dir):
    from transformers.utils import is_flash_attn_2_available

    if is_flash_attn_2_available():
        pytest.skip("flash-attn is installed (with a GPU) here")
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(model_dir), "attn_implementation": "flash_attention_2"},
                   expect=("model.attn_implementation", "'flash_attention_2' cannot be used here", "pip install "
                           "flash-attn", "Available here: eager, sdpa"))


def test_attention_checked_before_weights_load(model_dir, monkeypatch):
    """An unknown value is refused before from_pretrained runs."""
    import transformers

    from llmkit.config.sections import ModelConfig
    from llmkit.errors import UserError
    from llmkit.models.loading import load_model

    def boom(*args, **kwargs):
        raise AssertionError("from_pretrained ran")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", boom)
    with pytest.raises(UserError, match="model.attn_implementation: 'foo'"):
        load_model("AutoModelForSequenceClassification", ModelConfig(name_or_path=str(model_dir),
                                                                     attn_implementation="foo"), None)


# ---------------------------------------------------------------- 6. the llmkit cache


def test_tiny_model_cache_is_a_file(tmp_path, model_dir, monkeypatch):
    from llmkit.errors import UserError
    from llmkit.models.tiny import ModelSource, tiny_model_dir

    taken = tmp_path / "cache-file"
    taken.write_text("not a directory\n")
    monkeypatch.setenv("LLMKIT_CACHE", str(taken))
    with pytest.raises(UserError) as e:
        tiny_model_dir(ModelSource(str(model_dir), "cls"))
    message = str(e.value)
    for text in ("LLMKIT_CACHE:", f"LLMKIT_CACHE={taken}", f"{taken} is a file, not a directory",
                 "set LLMKIT_CACHE to a writable directory"):
        assert text in message, message


def test_tiny_model_data_cache_dir_is_a_file(tmp_path, model_dir):
    from llmkit.errors import UserError
    from llmkit.models.tiny import ModelSource, tiny_model_dir

    taken = tmp_path / "cache-file"
    taken.write_text("not a directory\n")
    with pytest.raises(UserError, match=r"data\.cache_dir: .* is a file, not a directory.*set data\.cache_dir"):
        tiny_model_dir(ModelSource(str(model_dir), "cls"), cache_dir=str(taken))


def test_tiny_model_of_a_folder_without_config(tmp_path):
    from llmkit.errors import UserError
    from llmkit.models.tiny import ModelSource, tiny_model_dir

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"model\.name_or_path: no config\.json in .*empty \(it is empty\)"):
        tiny_model_dir(ModelSource(str(empty), str(empty)))


def test_gguf_cache_is_a_file(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from llmkit.errors import UserError
    from llmkit.models.gguf import convert_gguf

    taken = tmp_path / "cache-file"
    taken.write_text("not a directory\n")
    monkeypatch.setenv("LLMKIT_CACHE", str(taken))
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(UserError, match=r"LLMKIT_CACHE: cannot write llmkit's cache .* is a file, not a directory"):
        convert_gguf(source)


def test_cache_permission_denied_message(tmp_path):
    from llmkit.data.cache import cache_error

    target = tmp_path / "cache" / "gguf" / "abc"
    message = str(cache_error(PermissionError(13, "Permission denied", str(tmp_path / "cache")), target))
    assert message.startswith("LLMKIT_CACHE: cannot write llmkit's cache at")
    assert "permission denied" in message and "set LLMKIT_CACHE to a writable directory" in message


# ---------------------------------------------------------------- 7. pickle weights


def _pickle_model(model_dir: Path, target: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    copy_model(model_dir, target, skip=("model.safetensors",))
    torch.save(load_file(str(model_dir / "model.safetensors")), target / "pytorch_model.bin")
    return target


def test_pickle_only_model_is_refused(tmp_path, tiny_config, model_dir):
    pickled = _pickle_model(model_dir, tmp_path / "pickled")
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(pickled)},
                   expect=("model.name_or_path", str(pickled / "pytorch_model.bin"), "pickle",
                           "model.allow_pickle=true"))


def test_truncated_pickle_with_allow_pickle(tmp_path, tiny_config, model_dir):
    pickled = _pickle_model(model_dir, tmp_path / "pickled")
    weights = pickled / "pytorch_model.bin"
    weights.write_bytes(_cut_in_half(weights.read_bytes()))
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(pickled), "allow_pickle": True},
                   expect=("model.name_or_path", str(weights), "truncated or corrupt", "Download the model again"))


# ---------------------------------------------------------------- 8. broken config.json and other mismatches


def _with_config(model_dir: Path, target: Path, config: str | dict) -> Path:
    copy_model(model_dir, target, skip=("config.json",))
    (target / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return target


@pytest.mark.parametrize("text, words", [
    ('{"model_type": "bert", ', ("is not valid JSON", "line 1")),
    ("[1, 2]", ("holds a JSON list",)),
    ("", ("is not valid JSON",)),
], ids=["cut-json", "a-list", "empty"])
def test_config_json_unreadable(tmp_path, tiny_config, model_dir, text, words):
    broken = _with_config(model_dir, tmp_path / "broken", text)
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(broken)},
                   expect=("model.name_or_path", str(broken / "config.json"), *words, "Download the model again"))


def test_config_json_unknown_model_type(tmp_path, tiny_config, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    broken = _with_config(model_dir, tmp_path / "broken", {**config, "model_type": "frobnicator"})
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(broken)},
                   expect=("model.name_or_path", "model_type 'frobnicator'", "does not know",
                           "pip install -U transformers"))


def test_config_json_without_model_type(tmp_path, tiny_config, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    del config["model_type"]
    broken = _with_config(model_dir, tmp_path / "broken", config)
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(broken)},
                   expect=("model.name_or_path", "has no model_type"))


def test_config_json_for_other_weights(tmp_path, tiny_config, model_dir):
    """A GPT-2 config.json beside BERT weights: nothing would load (a silently random model)."""
    broken = _with_config(model_dir, tmp_path / "broken", {"model_type": "gpt2", "n_layer": 2, "n_embd": 32,
                                                            "n_head": 2, "vocab_size": 156})
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(broken)},
                   expect=("model.name_or_path", "none of the weights", "do not belong together"))


def test_config_json_sizes_differ_from_weights(tmp_path, tiny_config, model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    broken = _with_config(model_dir, tmp_path / "broken", {**config, "vocab_size": 100})
    finetune_fails(tmp_path, tiny_config, {"name_or_path": str(broken)},
                   expect=("model.name_or_path", "do not match its config.json",
                           "bert.embeddings.word_embeddings.weight is [156, 32] in the checkpoint but [100, 32]"))


def test_config_json_architectures_for_another_head_loads(model_dir, tmp_path, tokenizer_dir):
    """`architectures` naming another head is no error: the task's Auto class decides, the new head is reported."""
    from transformers import AutoTokenizer

    from llmkit.config.sections import ModelConfig
    from llmkit.models.loading import load_model

    config = json.loads((model_dir / "config.json").read_text())
    other = _with_config(model_dir, tmp_path / "other", {**config, "architectures": ["BertForMaskedLM"]})
    model, _ = load_model("AutoModelForSequenceClassification", ModelConfig(name_or_path=str(other)),
                          AutoTokenizer.from_pretrained(tokenizer_dir))
    assert type(model).__name__ == "BertForSequenceClassification"


def test_head_trained_for_other_labels(model_dir, tokenizer_dir):
    from transformers import AutoTokenizer

    from llmkit.config.sections import ModelConfig
    from llmkit.errors import UserError
    from llmkit.models.loading import load_model

    with pytest.raises(UserError, match=r"does not fit this task: classifier\.\w+ is \[2.*\] in the checkpoint "
                                        r"but \[3.*\] here.*other labels"):
        load_model("AutoModelForSequenceClassification", ModelConfig(name_or_path=str(model_dir)),
                   AutoTokenizer.from_pretrained(tokenizer_dir), num_labels=3)


def test_model_type_without_the_task_class(tmp_path, tokenizer_dir, model_dir):
    from transformers import AutoTokenizer

    from llmkit.config.sections import ModelConfig
    from llmkit.errors import UserError
    from llmkit.models.loading import load_model

    clip = _with_config(model_dir, tmp_path / "clip", {"model_type": "clip"})
    with pytest.raises(UserError, match=r"is a clip model, and transformers has no AutoModelForCausalLM class"):
        load_model("AutoModelForCausalLM", ModelConfig(name_or_path=str(clip)),
                   AutoTokenizer.from_pretrained(tokenizer_dir))


@pytest.mark.parametrize("content, words", [
    (b"", ("is empty",)),
    (os.urandom(512).replace(b"GGUF", b"gguf"), ("is not a GGUF file",)),
    (b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 5, 2) + b"\x01\x00", ("truncated or corrupt",)),
], ids=["empty", "not-gguf", "cut-header"])
def test_damaged_gguf_file(tmp_path, content, words):
    pytest.importorskip("gguf")
    from llmkit.errors import UserError
    from llmkit.models.gguf import convert_gguf

    source = tmp_path / "model.gguf"
    source.write_bytes(content)
    with pytest.raises(UserError) as e:
        convert_gguf(source)
    message = str(e.value)
    for text in ("model.gguf_file:", str(source), *words, "Download it again"):
        assert text in message, message
    assert not [p for p in (Path(os.environ["LLMKIT_CACHE"]) / "gguf").glob("*") if p.is_dir()]  # nothing cached
