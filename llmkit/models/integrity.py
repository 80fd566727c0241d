"""What is wrong with a local model or tokenizer folder, said in words that name the file and the fix.

transformers' own errors for a bad folder read as hub lookups ("Repo id must be in the form ...") or
surface as tracebacks (a safetensors file cut short). The checks here look at the folder itself: cheap ones
(a file where a folder is expected, no config.json, config.json that is not JSON) run before loading; the
rest (unknown model_type, missing shards, truncated weights) run after transformers fails, to say why. No
heavy imports at module level.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path

from llmkit.errors import UserError, first_line
from llmkit.models.safety import hub_pickle_refusal, is_remote_code_refusal, is_safetensors_missing, remote_code_refusal

CONFIG = "config.json"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# Files a tokenizer folder holds (written by tokenizer.save_pretrained, or shipped beside a hub model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "special_tokens_map.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header's size
REDOWNLOAD = "Download the model again (or re-save it with save_pretrained)."


def listing(path: Path, limit: int = 6) -> str:
    """'it holds: a, b, c (and 4 more)' or 'it is empty', for messages about a folder."""
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError:
        return "it cannot be listed"
    if not names:
        return "it is empty"
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return f"it holds: {', '.join(names[:limit])}{more}"


def is_local(reference: str | Path) -> bool:
    return Path(reference).expanduser().exists()


# ---------------------------------------------------------------- before loading


def check_model_dir(key: str, reference: str | Path) -> None:
    """Refuse a local model reference transformers cannot load: a file, a folder without config.json, a
    config.json that is not a JSON object. Hub ids (no such local path) pass."""
    path = Path(reference).expanduser()
    if path.is_file():
        raise UserError(f"{key}: {path} is a file; {key} needs a model directory (config.json and the weights, as "
                        f"written by save_pretrained) or a hub id. {_file_fix(key, path)}")
    if not path.is_dir():
        return
    if not (path / CONFIG).is_file():
        raise UserError(f"{key}: no {CONFIG} in {path} ({listing(path)}), so it is not a transformers model "
                        f"directory. {_missing_config_fix(key, path)}")
    problem = config_json_problem(path / CONFIG)
    if problem:
        raise UserError(f"{key}: {problem}")


def check_tokenizer_path(key: str, reference: str | Path) -> None:
    """Refuse a tokenizer reference that is a file (transformers would read it as a broken config)."""
    path = Path(reference).expanduser()
    if path.is_file():
        parent = f" Point it at the folder that holds it: {path.parent}." if path.name in TOKENIZER_FILES else ""
        raise UserError(f"{key}: {path} is a file; {key} needs a tokenizer directory (tokenizer.json or "
                        f"tokenizer_config.json, as written by tokenizer.save_pretrained) or a hub id.{parent}")


def _file_fix(key: str, path: Path) -> str:
    if path.suffix.lower() == ".gguf":
        if key.startswith("model."):
            return f"A GGUF file loads through model.gguf_file: set model.gguf_file: {path} (and drop {key})."
        return "GGUF files load through model.gguf_file only (converted into a model directory on first use)."
    if path.name == CONFIG or path.name.endswith((".safetensors", ".bin", ".pt", ".pth", ".json")):
        return f"Point it at the folder that holds the file: {path.parent}."
    return "Check the path."


def _natural(path: Path) -> list:
    """Sort key: numbers in a name compare as numbers (checkpoint-75 before checkpoint-100)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]


def _missing_config_fix(key: str, path: Path) -> str:
    """The likeliest fix for a folder without config.json, from what it holds."""
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if ggufs and key.startswith("model."):
        return f"It holds a GGUF file: set model.gguf_file: {ggufs[0]} beside {key}."
    nested = sorted((p for p in path.iterdir() if (p / CONFIG).is_file()), key=_natural) \
        if os.access(path, os.R_OK) else []
    if nested and all(p.name.startswith("checkpoint-") for p in nested):  # a run's checkpoints/: the newest
        return f"Its newest checkpoint {nested[-1].name}/ holds a {CONFIG}: point {key} at {nested[-1]}."
    if nested:
        return f"Its subfolder {nested[0].name}/ holds a {CONFIG}: point {key} at {nested[0]}."
    if (path / "adapter_config.json").is_file():
        return ("It holds a PEFT adapter (adapter_config.json) but not llmkit's llmkit_adapter.json: merge it into "
                "its base model (merge_and_unload, save_pretrained) and point to that, or give the llmkit adapter "
                "run that trained it.")
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        return (f"It holds tokenizer files only: that is a tokenizer folder (tokenizer.name_or_path); {key} needs "
                "the model's folder, with config.json and model.safetensors.")
    return (f"Point {key} at the folder written by save_pretrained (config.json + model.safetensors), or at a hub "
            "id; a download that stopped early leaves a folder like this: download it again.")


def config_json_problem(config: Path) -> str | None:
    """Why a config.json cannot be read (not JSON, not an object), or None."""
    try:
        data = json.loads(config.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        where = f" (line {e.lineno}, column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        return f"{config} is not valid JSON{where}: the file is truncated or corrupt. {REDOWNLOAD}"
    except OSError as e:
        return f"{config} cannot be read: {e.strerror or e}."
    if not isinstance(data, dict):
        return f"{config} holds a JSON {type(data).__name__}, not an object of settings. {REDOWNLOAD}"
    return None


# ---------------------------------------------------------------- after a failed load: why


def model_dir_problem(reference: str | Path) -> str | None:
    """Why a local model folder does not load (missing shards or weights, truncated or corrupt weights, an
    unknown model_type), or None when nothing is found (a hub id, or an error this check does not know)."""
    path = Path(reference).expanduser()
    if not path.is_dir():
        return None
    for check in (shard_problem, no_weights_problem, weights_file_problem, model_type_problem):
        problem = check(path)
        if problem:
            return problem
    return None


def model_type_problem(path: Path) -> str | None:
    """config.json's model_type missing or unknown to the installed transformers."""
    config = path / CONFIG
    try:
        data = json.loads(config.read_bytes())
    except (OSError, ValueError):
        return config_json_problem(config) if config.is_file() else None
    if not isinstance(data, dict):
        return config_json_problem(config)
    model_type = data.get("model_type")
    if "auto_map" in data:
        return None  # custom code names its own classes: transformers' message (trust_remote_code) says it
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not model_type:
        return (f"{config} has no model_type, so transformers cannot tell which architecture it describes. "
                f"{REDOWNLOAD}")
    if model_type not in CONFIG_MAPPING:
        return (f"{config} has model_type {model_type!r}, which transformers {transformers.__version__} does not "
                "know. Upgrade transformers (pip install -U transformers); if the model ships its own modeling "
                "code, it needs trust_remote_code.")
    return None


def shard_problem(path: Path) -> str | None:
    """A sharded checkpoint whose index names shard files that are not there (an interrupted download)."""
    for name in (SAFETENSORS_INDEX, PICKLE_INDEX):
        index = path / name
        if not index.is_file():
            continue
        try:
            weight_map = json.loads(index.read_bytes())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return (f"{index} is not a valid shard index (JSON with a weight_map): it is truncated or corrupt. "
                    f"{REDOWNLOAD}")
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more of its {len(shards)} shards)" if len(missing) > 1 else ""
            return (f"{name} in {path} lists the weight shard {missing[0]}{more}, which is missing: the download "
                    "is incomplete. Download the model again, all shards.")
    return None


def no_weights_problem(path: Path) -> str | None:
    """A folder with config.json but no weights file at all (a download that stopped after the small files)."""
    if any(p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) for p in path.iterdir()):
        return None
    return (f"no weights in {path} ({listing(path)}): model.safetensors (or its shards) is missing, so the "
            f"download or save did not finish. {REDOWNLOAD}")


def weights_file_problem(path: Path) -> str | None:
    """The first weights file in `path` that is truncated or corrupt (safetensors header and size, torch zip)."""
    for f in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            return problem
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.endswith((".bin", ".pt", ".pth")):
            problem = pickle_zip_problem(f)
            if problem:
                return problem
    return None


def safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be read, from its header alone: an 8-byte length, a JSON header of that
    length, then exactly the tensor bytes the header lists. None for a file that checks out."""
    fix = "Download it again (or re-save the model with save_pretrained)."
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            header = fh.read(header_len) if 0 < header_len <= min(size - 8, MAX_HEADER) else None
    except OSError as e:
        return f"{file} cannot be read: {e.strerror or e}."
    if size == 0:
        return f"{file} is empty (0 bytes): the download or save did not finish. {fix}"
    if size < 8:
        return f"{file} is only {size} bytes, too short for a safetensors file: it is truncated. {fix}"
    if header_len > size - 8:
        return (f"{file} is truncated or corrupt: its header claims {header_len} bytes but the file has only "
                f"{size - 8} after the length field (or it is not a safetensors file at all). {fix}")
    if header is None:
        return f"{file} is corrupt: its header length ({header_len} bytes) is not that of a safetensors file. {fix}"
    try:
        tensors = json.loads(header)
        end = max((int(t["data_offsets"][1]) for k, t in tensors.items() if k != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{file} is corrupt: its header is not the JSON a safetensors file starts with. {fix}"
    expected = 8 + header_len + end
    if size < expected:
        return (f"{file} is truncated: its header describes {expected} bytes but the file has only {size}. {fix}")
    if size > expected:
        return f"{file} is corrupt: it has {size - expected} bytes beyond the {expected} its header describes. {fix}"
    return None


def pickle_zip_problem(file: Path) -> str | None:
    """A torch.save file (a zip archive) cut short: it starts as a zip but its directory at the end is gone."""
    try:
        with file.open("rb") as fh:
            starts_as_zip = fh.read(2) == b"PK"
        whole = zipfile.is_zipfile(file)
    except OSError as e:
        return f"{file} cannot be read: {e.strerror or e}."
    if file.stat().st_size == 0:
        return f"{file} is empty (0 bytes): the download or save did not finish. {REDOWNLOAD}"
    if starts_as_zip and not whole:
        return f"{file} is truncated or corrupt (an incomplete torch zip archive). {REDOWNLOAD}"
    return None


def has_tokenizer_files(path: Path) -> bool:
    """Whether a folder holds anything a tokenizer loads from (names of every tokenizer family: tokenizer.json,
    vocab.txt, merges.txt, spiece.model, *.tiktoken, ...)."""
    return any(f.is_file() and (f.name in TOKENIZER_FILES or f.name.startswith("tokenizer") or "vocab" in f.name
                                or "merges" in f.name or f.suffix in (".model", ".spm", ".tiktoken", ".codes"))
               for f in path.iterdir())


def tokenizer_dir_problem(key: str, reference: str | Path) -> str | None:
    """A local folder without any tokenizer file, or with a tokenizer JSON file that does not parse; else None.
    Checked before loading: without tokenizer files transformers 5 builds a tokenizer of special tokens only from
    config.json's model_type, which turns every word into the unknown token, silently."""
    path = Path(reference).expanduser()
    if not path.is_dir():
        return None
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (path / name).is_file():
            try:
                json.loads((path / name).read_bytes())
            except (OSError, ValueError):
                return (f"{path / name} is not valid JSON: the file is truncated or corrupt. Download the tokenizer "
                        "again (or re-save it with tokenizer.save_pretrained).")
    if has_tokenizer_files(path):
        return None
    if key == "tokenizer.name_or_path":
        return (f"no tokenizer files in {path} ({listing(path)}); a tokenizer folder holds tokenizer.json or "
                "tokenizer_config.json (written by tokenizer.save_pretrained). Point tokenizer.name_or_path at "
                "such a folder (usually the model's own), or leave it unset to use the model's tokenizer.")
    return (f"the model folder {path} has no tokenizer files ({listing(path)}). Save the tokenizer beside the "
            "model (tokenizer.save_pretrained), or set tokenizer.name_or_path to the tokenizer's folder.")


# ---------------------------------------------------------------- from_pretrained's errors


def load_errors() -> tuple[type[BaseException], ...]:
    """What from_pretrained raises for a model it cannot load (bad folder, bad file, missing package); anything
    else is a bug and keeps its traceback."""
    import pickle

    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, ImportError, SafetensorError, pickle.UnpicklingError


def explain_load_error(error: BaseException, key: str, label: str, path: str | Path, allow_key: str) -> str:
    """The message for a failed from_pretrained of `path` (`label` as the config names it)."""
    import pickle

    from safetensors import SafetensorError

    if is_safetensors_missing(error):
        return f"{key}: {hub_pickle_refusal(label, allow_key)}"
    if is_remote_code_refusal(error):
        return f"{key}: {remote_code_refusal(label, allow_key.replace('allow_pickle', 'trust_remote_code'))}"
    if isinstance(error, pickle.UnpicklingError):  # allow_pickle: transformers unpickles with weights_only=True
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        return (f"{key}: the pickle weights of {label!r} hold more than tensors: torch's weights-only unpickler "
                f"refused an object{what} that would run code when unpickled, so nothing was loaded. Fix: use the "
                "model's safetensors weights (model.safetensors), or, if you trust the file, convert it once "
                "(torch.load(..., weights_only=False), then save_pretrained).")
    problem = model_dir_problem(path)
    if problem:
        return f"{key}: {problem}"
    no_class = re.search(r"Unrecognized configuration class .*? for this kind of AutoModel: (\w+)", str(error))
    if no_class:
        return (f"{key}: {label!r} is a {_model_type(path) or 'model'} model, and transformers has no "
                f"{no_class.group(1)} class for that type: this task needs another kind of model (or choose "
                "another task for this one).")
    if isinstance(error, RuntimeError):
        return f"{key}: {size_mismatch(error, label) or f'{label!r} does not fit this task: {first_line(error)}'}"
    if isinstance(error, SafetensorError):
        return f"{key}: the weights of {label!r} cannot be read: {first_line(error)} {REDOWNLOAD}"
    hint = "" if is_local(path) else (" If this is a hub id and you are offline, download it first or point to a "
                                      "local directory.")
    return f"{key}: cannot load {label!r}: {first_line(error)}{hint}"


def _model_type(path: str | Path) -> str | None:
    try:
        return json.loads((Path(path).expanduser() / CONFIG).read_bytes()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def size_mismatch(error: BaseException, label: str) -> str | None:
    """For transformers' "size mismatch" error: which tensor differs, and whether it is the task head (trained for
    other labels) or the model itself (weights that do not belong to its config.json)."""
    info, model = None, None
    tb = error.__traceback__
    while tb is not None:  # the loading report that raised holds the mismatched tensors
        frame = tb.tb_frame.f_locals
        info, model = frame.get("loading_info", info), frame.get("model", model)
        tb = tb.tb_next
    mismatched = sorted(getattr(info, "mismatched_keys", None) or [])
    if not mismatched:
        return None
    name, checkpoint, wanted = mismatched[0]
    more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
    shapes = f"{name} is {list(checkpoint)} in the checkpoint but {list(wanted)} here{more}"
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix != "." and not any(n.startswith(prefix) for n, _, _ in mismatched):
        return (f"{label!r} does not fit this task: {shapes}. Its task head was trained for other labels or "
                "another task; start from a checkpoint without that head (its base model), or use data with the "
                "checkpoint's labels.")
    return (f"the weights of {label!r} do not match its config.json: {shapes}. The config and the weights do not "
            f"belong together. {REDOWNLOAD}")


# ---------------------------------------------------------------- the llmkit cache
