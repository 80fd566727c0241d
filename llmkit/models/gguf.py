"""`model.gguf_file`: convert a local GGUF file once into a cached safetensors directory.

Loading a GGUF file through transformers dequantises every tensor (about 15 s for
a 135M model); the converted directory under `$LLMKIT_CACHE/gguf/<content hash>`
loads in well under a second, so only the first run pays. No heavy imports here:
the config validation uses `gguf_path`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from llmkit.data.cache import cache_error, publishing
from llmkit.errors import UserError, first_line
from llmkit.models.quiet import quiet_transformers
from llmkit.models.resolve import resolve_model_path

MARKER = "llmkit-gguf.json"  # written last: a directory without it is an interrupted conversion
INDEX = "index.json"  # (path, size, mtime) -> sha256, so big files are not re-hashed on every run
CHUNK = 1 << 20


def cache_root() -> Path:
    return Path(os.environ.get("LLMKIT_CACHE") or Path.home() / ".cache" / "llmkit").expanduser() / "gguf"


def gguf_path(model_cfg: Any) -> Path:
    """The GGUF file a `ModelConfig` names: `gguf_file` alone, or inside the `name_or_path` directory."""
    path = Path(model_cfg.gguf_file).expanduser()
    if model_cfg.name_or_path and not path.is_absolute():
        path = Path(resolve_model_path(model_cfg.name_or_path)) / path
    return path.resolve()


def _read_index(root: Path) -> dict:
    try:
        return json.loads((root / INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    """Write atomically (temp file + rename) so concurrent runs never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def file_digest(path: str | Path) -> str:
    """sha256 of the file's content (1 MiB chunks), remembered by (path, size, mtime) in the cache index."""
    path = Path(path).resolve()
    st = path.stat()
    root = cache_root()
    index = _read_index(root)
    entry = index.get(str(path))
    if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["sha256"]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    index = _read_index(root)  # re-read: another run may have added entries meanwhile
    index[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    with contextlib.suppress(OSError):
        _write_json(root / INDEX, index)
    return digest


def gguf_cache_dir(gguf_path: str | Path) -> Path:
    """Where the conversion of this file lives: `$LLMKIT_CACHE/gguf/<first 16 hex of its sha256>`."""
    return cache_root() / file_digest(gguf_path)[:16]


def is_converted(target: Path) -> bool:
    return (target / MARKER).is_file()


def require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise UserError("model.gguf_file: reading GGUF files needs the gguf package; pip install gguf "
                        "(or pip install 'llmkit[gguf]').")


@contextlib.contextmanager
def _no_progress_bars():
    """No progress bars while converting (the GGUF reader's own tqdm bar cannot be switched off otherwise), so
    llmkit's report stays one line."""
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as reader
    except ImportError:
        reader = None
    original = getattr(reader, "tqdm", None)
    if original is not None:
        reader.tqdm = lambda iterable, *args, **kwargs: iterable
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards"
    try:
        yield
    finally:
        if original is not None:
            reader.tqdm = original
        if bars:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf_path: str | Path) -> Path:
    """The cached safetensors directory (model + tokenizer) for a GGUF file; converts it on first use."""
    source = Path(gguf_path).expanduser().resolve()
    if not source.is_file():
        raise UserError(f"model.gguf_file: no GGUF file at {str(source)!r}. Check the path.")
    try:
        target = gguf_cache_dir(source)
    except OSError as e:
        raise UserError(f"model.gguf_file: cannot read {str(source)!r}: {e.strerror or e}.") from None
    if is_converted(target):
        return target
    require_gguf_package()
    try:
        return _convert(source, target)
    except OSError as e:  # reading the GGUF file is handled inside: this is writing the cache
        raise cache_error(e, target) from None


def _convert(source: Path, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer


    print(f"converting {source.name} (once) -> {target}", end="", flush=True)
    start = time.perf_counter()
    with publishing(target, is_converted) as tmp:
        try:
            with quiet_transformers(), _no_progress_bars():
                model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
                tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        except (OSError, ValueError, RuntimeError, KeyError, IndexError, struct.error) as e:
            print()
            problem = gguf_problem(source)
            if problem:
                raise UserError(f"model.gguf_file: {problem}") from None
            raise UserError(f"model.gguf_file: cannot load {str(source)!r}: {first_line(e)} transformers reads "
                            "GGUF files of the architectures it supports (llama, mistral, qwen2, gpt2, ...).") from None
        # The dequantised weights are plain tensors; transformers refuses to save while it still sees the
        # gguf quantizer, so drop it.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        with quiet_transformers(), _no_progress_bars():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        _write_json(tmp / MARKER, {"source": str(source), "sha256": file_digest(source),
                                   "converted": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f" ({time.perf_counter() - start:.1f} s)", flush=True)
    return target


def gguf_problem(path: Path) -> str | None:
    """Why a file is not a readable GGUF file (empty, not GGUF, truncated or corrupt), or None when the GGUF
    reader reads it whole (then the architecture is what transformers refuses)."""
    fix = "Download it again (compare its size with the source's) or export it again."
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        return f"{path} cannot be read: {e.strerror or e}."
    if size == 0:
        return f"{path} is empty (0 bytes). {fix}"
    if magic != b"GGUF":
        return f"{path} is not a GGUF file (it does not start with the GGUF magic bytes). {fix}"
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (OSError, ValueError, KeyError, IndexError, struct.error) as e:
        return f"{path} is truncated or corrupt: the GGUF reader stops with {first_line(e)} {fix}"
    if end > size:
        return f"{path} is truncated: its tensors need {end} bytes but the file has {size}. {fix}"
    return None
