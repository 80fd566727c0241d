"""Distributed-launch configs: accelerate config files and train.deepspeed, checked without DeepSpeed or GPUs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import write_yaml
from tests.recipes.helpers import invoke

ACCELERATE = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "num_processes": 2,
              "num_machines": 1, "machine_rank": 0, "mixed_precision": "no", "use_cpu": False,
              "deepspeed_config": {"zero_stage": 2}}


@pytest.mark.parametrize("change, expected", [
    ({"deepspeed_config": {"zero_stag": 2}}, "deepspeed_config.zero_stag: not an `accelerate launch` option; did "
                                            "you mean zero_stage?"),
    ({"deepspeed_config": {"zero_stage": 4}}, "deepspeed_config.zero_stage: expected one of 0, 1, 2, 3; got 4."),
    ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_version": 3}}, "fsdp_config.fsdp_version: expected 1 or 2"),
    ({"distributed_type": "MULTI_GPU"}, "deepspeed_config: set but distributed_type is MULTI_GPU; use DEEPSPEED."),
    ({"num_procesess": 2}, "accelerate cannot read it: The config file at"),
])
def test_broken_accelerate_configs_are_refused_with_the_key(tmp_path, change, expected):
    path = write_yaml(tmp_path / "acc.yaml", {**ACCELERATE, **change})
    result = invoke("config", "validate", path)
    assert result.exit_code == 2, result.output
    assert expected in result.output and f"Invalid config in {path}" in result.output


def test_a_valid_accelerate_config_names_its_launch_line(tmp_path):
    path = write_yaml(tmp_path / "acc.yaml", ACCELERATE)
    result = invoke("config", "validate", path)
    assert result.exit_code == 0, result.output
    assert f"valid accelerate config (accelerate launch --config_file {path} -m llmkit" in result.output


def test_train_deepspeed_is_checked_as_a_file_or_a_mapping(tmp_path, tiny_config):
    good = tmp_path / "ds.json"
    good.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto"}))
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    cases = {str(good): None, "{zero_optimization: {stage: 3}}": None,
             str(tmp_path / "missing.json"): "train.deepspeed: no DeepSpeed config file at",
             str(broken): "is not valid JSON", "{zero_optimization: {stage: 5}}": "stage must be 0, 1, 2 or 3; got 5",
             "7": "train.deepspeed: expected dict or str or null, got 7"}
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    installed = importlib.util.find_spec("deepspeed") is not None
    for value, expected in cases.items():
        result = invoke("config", "validate", cfg, f"train.deepspeed={value}")
        if expected is None and not installed:
            expected = "the config is valid, but the deepspeed package is not installed here"
        if expected is None:
            assert result.exit_code == 0, (value, result.output)
        else:
            assert result.exit_code == 2 and expected in result.output, (value, result.output)


def test_running_with_deepspeed_but_without_the_package_says_what_to_install(tmp_path, tiny_config):
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    tiny_config["train"]["deepspeed"] = {"zero_optimization": {"stage": 2}}
    result = invoke("finetune", write_yaml(tmp_path / "cfg.yaml", tiny_config))
    assert result.exit_code == 2, result.output
    assert "train.deepspeed" in result.output and "pip install deepspeed" in result.output
    assert not (tmp_path / "run").exists()
