"""Which names count as secrets, and that no ordinary setting is mistaken for one."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from llmkit.config.secrets import REDACTED, is_secret_name, redact_argv, redact_config, scrub


@pytest.mark.parametrize("name", ["hub_token", "token", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY",
                                  "OPENAI_API_KEY", "GITHUB_TOKEN", "auth_token", "db_password", "client_secret",
                                  "AWS_SECRET_ACCESS_KEY", "apikey"])
def test_credentials_are_secret(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["pad_token", "eos_token", "mask_token", "pad_token_id", "max_new_tokens",
                                  "tokenizer", "multi_token", "special_tokens", "train_tokens", "tokens_column",
                                  "include_num_input_tokens_seen", "TOKENIZERS_PARALLELISM", "label_column"])
def test_settings_about_tokens_are_not_secret(name):
    assert not is_secret_name(name)


def _field_names(cls, seen=None) -> set[str]:
    seen = set() if seen is None else seen
    if cls in seen or not dataclasses.is_dataclass(cls):
        return set()
    seen.add(cls)
    names = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        names.add(f.name)
        for arg in (hints.get(f.name), *typing.get_args(hints.get(f.name))):
            names |= _field_names(arg, seen)
    return names


def test_no_llmkit_setting_is_taken_for_a_secret_but_hub_token():
    from llmkit.commands import COMMANDS
    from llmkit.config.sections import training_argument_fields

    names = set(training_argument_fields())
    for command in COMMANDS.values():
        names |= _field_names(command.config_cls())
    assert {n for n in names if is_secret_name(n)} == {"hub_token"}


def test_redaction_of_configs_command_lines_and_text(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-1")
    data, keys = redact_config({"train": {"hub_token": "hf_abcdefgh", "seed": 1},
                                "tokenizer": {"special_tokens": {"pad_token": "[PAD]"}}})
    assert keys == ["train.hub_token"] and data["train"] == {"hub_token": None, "seed": 1}
    assert data["tokenizer"]["special_tokens"]["pad_token"] == "[PAD]"
    assert redact_argv(["llmkit", "x.yaml", "train.hub_token=zz", "train.seed=1"])[2:] == [
        f"train.hub_token={REDACTED}", "train.seed=1"]
    assert scrub("token s3cr3t-value-1 and hf_abcdefgh") == f"token {REDACTED} and {REDACTED}"
