"""Keep credentials (hub tokens, API keys, passwords) out of run directories, logs and printed output.

A config key is a secret when its name says so (`hub_token`, `api_key`, `password`, `*_secret`, ...) and it
holds a string; `pad_token`, `max_new_tokens`, `tokenizer` and the like are settings, not credentials. On top
of the keys, every value of a secret-named environment variable (HF_TOKEN, WANDB_API_KEY, ...) and every
secret config value seen in this process is scrubbed from text llmkit writes.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "<redacted>"
SECRET_WORDS = {"secret", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
SECRET_PAIRS = ("api_key", "access_key", "private_key", "secret_key")
# `<word>_token` names that are a tokenizer's special tokens or a setting about tokens, not a credential.
NOT_CREDENTIAL_TOKENS = {"pad", "eos", "bos", "unk", "mask", "sep", "cls", "special", "additional", "start", "end",
                         "stop", "multi", "single", "image", "audio", "video", "boi", "eoi", "placeholder",
                         "decoder", "think", "fim", "new", "max", "min", "num"}
MIN_SCRUBBED_LENGTH = 8  # shorter environment values ("1", "true") are flags, and too common to replace in text

_seen: set[str] = set()  # secret config values met in this process, scrubbed from text like the environment's


def is_secret_name(name: str) -> bool:
    """True for names of credentials: hub_token, HF_TOKEN, WANDB_API_KEY, db_password; not pad_token, tokenizer."""
    words = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
    if not words:
        return False
    joined = "_".join(words)
    if SECRET_WORDS & set(words) or any(pair in joined for pair in SECRET_PAIRS):
        return True
    if words[-1] != "token":
        return False
    return len(words) == 1 or words[-2] not in NOT_CREDENTIAL_TOKENS


def redact_config(data: Any, prefix: str = "") -> tuple[Any, list[str]]:
    """A copy of a config tree (plain dicts and lists) with secret string values set to None, and their dotted
    keys."""
    if isinstance(data, dict):
        out, keys = {}, []
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if is_secret_name(key) and isinstance(value, str) and value:
                _seen.add(value)
                out[key], keys = None, keys + [path]
            else:
                out[key], found = redact_config(value, path)
                keys += found
        return out, keys
    if isinstance(data, list):
        pairs = [redact_config(v, prefix) for v in data]
        return [v for v, _ in pairs], [k for _, found in pairs for k in found]
    return data, []


def redacted_note(keys: list[str]) -> str:
    """The YAML comment saying which secrets a saved config leaves out, and where they come from instead."""
    return (f"# Left out (secrets, never written): {', '.join(keys)}. Give them on the command line "
            "(e.g. train.hub_token=...) or through the environment (HF_TOKEN for the hub).")


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with secret `key=value` overrides (and any known secret value) redacted."""
    out = []
    for arg in argv:
        key, sep, value = str(arg).partition("=")
        if sep and value and is_secret_name(key.rsplit(".", 1)[-1].lstrip("-")):
            _seen.add(value)
            arg = f"{key}={REDACTED}"
        out.append(scrub(str(arg)))
    return out


def secret_values() -> set[str]:
    """Values to keep out of any text: secret-named environment variables and secret config values seen."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= MIN_SCRUBBED_LENGTH}
    return values | {v for v in _seen if len(v) >= MIN_SCRUBBED_LENGTH}


def scrub(text: str) -> str:
    """`text` with every known secret value replaced by <redacted>."""
    for value in sorted(secret_values(), key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text
