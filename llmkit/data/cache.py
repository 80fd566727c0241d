"""On-disk cache of prepared (tokenized) datasets.

The key hashes the data files' contents, the tokenizer (its full serialised
form, special tokens and padding/truncation sides), the preprocessing
settings and llmkit's version, so a changed file, tokenizer or setting never
reuses a stale cache (the axolotl #1265 failure). `datasets`' own map cache is
keyed on fingerprints of in-process transforms and does not survive a new
process for data loaded in memory, hence this small layer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.version import __version__

META_FILE = "llmkit_meta.json"
# How raw cells are read and checked (csv cells as written, labels stripped, notes kept in the meta); a change
# there changes prepared data without changing llmkit's version, so it is part of every key.
READER_VERSION = 2


def cache_root(cache_dir: str | None) -> Path:
    root = cache_dir or os.environ.get("LLMKIT_CACHE") or Path.home() / ".cache" / "llmkit"
    return Path(root).expanduser() / "data"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's name and bytes, or of every file under a directory (save_to_disk datasets, model
    directories). A directory's digest is marked as one and gives each file's name and size before its bytes,
    so that neither a folder holding one file nor a different split of the same bytes into files hashes like
    something else (a folder and the file inside it once shared a key: the cache answered for the wrong input)."""
    path = Path(path)
    h = hashlib.sha256()
    if not path.is_dir():
        h.update(path.name.encode())
        _hash_bytes(h, path)
        return h.hexdigest()
    h.update(b"directory\0")
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        name = str(f.relative_to(path)).encode()
        h.update(len(name).to_bytes(8, "little") + name + f.stat().st_size.to_bytes(8, "little"))
        _hash_bytes(h, f)
    return h.hexdigest()


def _hash_bytes(h: Any, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def files_digest(value: str | list[str] | None) -> list[str] | None:
    """Digests of a data setting's file(s) (None when unset), for cache keys."""
    if value is None:
        return None
    return [file_digest(v) for v in ([value] if isinstance(value, str) else value)]


def tokenizer_digest(tokenizer: Any) -> str:
    """A hash of everything about a tokenizer that changes its output."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state["truncation"] = state["padding"] = None  # per-call settings that every tokenizer(...) call changes
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps({
        "class": type(tokenizer).__name__,
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
        "model_max_length": min(tokenizer.model_max_length, 1 << 31),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }, sort_keys=True).encode())
    return h.hexdigest()


def cache_key(parts: dict) -> str:
    payload = json.dumps({"llmkit": __version__, "reader": READER_VERSION, **parts}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@contextlib.contextmanager
def publishing(target: Path, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Build a cache directory under a temporary name beside `target`, renamed into place when the block ends
    without an error: a concurrent or interrupted run never sees it half-written. `complete(path)` tells a
    finished directory (another process may have published `target` first: then its result is kept) from one an
    earlier, interrupted run left behind (replaced)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.tmp-"))
    try:
        yield tmp
        if target.exists() and not complete(target):
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_dataset(enabled: bool, cache_dir: str | None, parts: dict, build: Callable[[], tuple[Any, dict]]):
    """Return `(dataset_dict, meta, hit)`: from the cache when present, else from `build()` (then stored).

    `build` returns a `datasets.DatasetDict` and a JSON-serialisable `meta` dict
    (label names, statistics) that is stored beside it.
    """
    import datasets

    if not enabled:
        ds, meta = build()
        return ds, meta, False
    target = cache_root(cache_dir) / cache_key(parts)
    meta_path = target / META_FILE
    if meta_path.is_file():
        return datasets.load_from_disk(str(target)), json.loads(meta_path.read_text()), True
    ds, meta = build()
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        (tmp / META_FILE).write_text(json.dumps({**meta, "key_parts": parts}, indent=1, default=str))
    except OSError as e:  # the cache location failed, not the data: name the setting that chose it
        shutil.rmtree(tmp, ignore_errors=True)
        raise cache_error(e, target, cache_dir) from None
    try:
        tmp.rename(target)  # atomic: a concurrent or interrupted run never sees a half-written cache
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process stored the same key first
    return ds, meta, False


def cache_setting(cache_dir: str | None) -> str:
    """The setting that chose the cache location, for messages: data.cache_dir or LLMKIT_CACHE."""
    return "data.cache_dir" if cache_dir else "LLMKIT_CACHE"


def cache_error(error: OSError, path: Path, cache_dir: str | None = None) -> UserError:
    """An OSError writing under the llmkit cache, as a UserError naming the setting, the path and the fix."""
    key = cache_setting(cache_dir)
    where = (f"LLMKIT_CACHE={os.environ['LLMKIT_CACHE']}" if key == "LLMKIT_CACHE" and os.environ.get("LLMKIT_CACHE")
             else f"data.cache_dir={cache_dir}" if cache_dir else "the default ~/.cache/llmkit")
    fix = ("set data.cache_dir to a writable directory (or leave it unset)" if cache_dir else
           "set LLMKIT_CACHE to a writable directory (export LLMKIT_CACHE=/path/to/dir)")
    return UserError(f"{key}: cannot write llmkit's cache at {path} ({where}): {_os_reason(error, path)}. Fix: {fix}.")


def _os_reason(error: OSError, path: Path) -> str:
    blocking = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        return f"{blocking} is a file, not a directory"
    reasons = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded"}
    reason = reasons.get(error.errno, error.strerror or str(error))
    return f"{reason} ({error.filename})" if error.filename else reason
