"""Safety of inputs through the real CLI: configs never run code, remote code and pickle weights stay off unless a
config turns them on (with a warning), and secrets never reach the run directory or the printed output."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import write_yaml
from tests.recipes.helpers import invoke, tiny_bert_config

PYTHON_TAG = '!!python/object/apply:os.system ["touch {marker}"]'


def _tiny_bert(tokenizer_dir):
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return BertForSequenceClassification(tiny_bert_config(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def pickle_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny BERT classifier whose weights are a torch pickle (pytorch_model.bin), as old hub checkpoints are.
    transformers 5 writes safetensors only, so the state dict is torch.save'd by hand."""
    model, tokenizer = _tiny_bert(tokenizer_dir)
    out = tmp_path_factory.mktemp("pickle-bert")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "model.safetensors").unlink()
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


def _finetune_on(tiny_config: dict, model_dir: Path) -> dict:
    tiny_config["model"] = {"name_or_path": str(model_dir)}
    tiny_config["tokenizer"] = {}
    return tiny_config


# ---------------------------------------------------------------- configs never run code


def test_a_python_yaml_tag_in_a_config_is_refused_and_runs_nothing(tmp_path, tiny_config):
    marker = tmp_path / "ran"
    text = yaml.safe_dump(tiny_config, sort_keys=False) + f"extra: {PYTHON_TAG.format(marker=marker)}\n"
    (tmp_path / "cfg.yaml").write_text(text)
    result = invoke("finetune", tmp_path / "cfg.yaml")
    assert result.exit_code == 2, result.output
    assert "YAML tag !!python/object/apply:os.system is not allowed" in result.output
    assert "nothing was run" in result.output and "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "run").exists()
    result = invoke("config", "validate", tmp_path / "cfg.yaml")
    assert result.exit_code == 2 and "not allowed" in result.output and not marker.exists()


def test_a_python_yaml_tag_in_an_override_is_refused(tmp_path, tiny_config):
    marker = tmp_path / "ran"
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, f"train.seed={PYTHON_TAG.format(marker=marker)}")
    assert result.exit_code == 2, result.output
    assert "train.seed: the YAML tag !!python/object/apply:os.system is not allowed" in result.output
    assert not marker.exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- remote code


def test_trust_remote_code_is_off_by_default_and_warns_once_when_on(tmp_path, tiny_config):
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "trust_remote_code: false" in result.output and "trust_remote_code is on" not in result.output
    result = invoke("finetune", cfg, "--dry-run", "model.trust_remote_code=true")
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: model.trust_remote_code is on") == 1, result.output
    assert "code from the model repository" in result.output


@pytest.fixture
def custom_code_model(tmp_path, tokenizer_dir, monkeypatch) -> tuple[Path, Path]:
    """A tiny BERT classifier folder whose config.json names its own code (auto_map) in the folder, as a hub
    repository with custom code does; importing either module writes a sentinel file. Returns (folder, sentinel).
    transformers' module cache (where trusted code is copied and imported from) is a folder of the test's."""
    import transformers.dynamic_module_utils as dynamic

    model, tokenizer = _tiny_bert(tokenizer_dir)
    folder, sentinel = tmp_path / "custom-model", tmp_path / "custom-code-ran"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ran = f"from pathlib import Path\nPath({str(sentinel)!r}).write_text(__name__)\n"
    (folder / "configuration_sentinel.py").write_text(
        ran + "from transformers import BertConfig\n\n\nclass SentinelConfig(BertConfig):\n"
        "    model_type = 'sentinel-bert'\n")
    (folder / "modeling_sentinel.py").write_text(
        ran + "from transformers import BertForSequenceClassification\n\nfrom .configuration_sentinel import "
        "SentinelConfig\n\n\nclass SentinelForSequenceClassification(BertForSequenceClassification):\n"
        "    config_class = SentinelConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="sentinel-bert", architectures=["SentinelForSequenceClassification"], auto_map={
        "AutoConfig": "configuration_sentinel.SentinelConfig",
        "AutoModelForSequenceClassification": "modeling_sentinel.SentinelForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the module cache joins sys.path only for this test
    for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
        monkeypatch.delitem(sys.modules, name)
    return folder, sentinel


def test_a_models_own_code_never_runs_unless_trust_remote_code_is_on(tmp_path, tiny_config, sentiment_data,
                                                                      custom_code_model):
    folder, sentinel = custom_code_model
    cfg = write_yaml(tmp_path / "cfg.yaml", _finetune_on(tiny_config, folder))
    fix = "ships its own Python code"
    for command, args, key in (("finetune", (cfg, "--dry-run"), "model.trust_remote_code"),
                               ("eval", (folder, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "ev"),
                                "model.trust_remote_code")):
        result = invoke(command, *args)
        assert result.exit_code == 2, result.output
        assert f"error: model.name_or_path: {str(folder)!r} {fix}" in result.output, result.output
        assert "none of it was run. Fix:" in result.output and f"set {key}=true" in result.output
        assert "Traceback" not in result.output
        assert not sentinel.exists(), sentinel.read_text()
    distill = {key: value for key, value in tiny_config.items() if key not in ("model", "tokenizer")}
    distill["distill"] = {"teacher": str(folder), "student": {"from_teacher": {"keep_layers": [0]}}}
    result = invoke("distill", write_yaml(tmp_path / "distill.yaml", distill), "--dry-run")
    assert result.exit_code == 2, result.output
    assert fix in result.output and "set distill.teacher_trust_remote_code=true" in result.output
    assert not sentinel.exists() and not (tmp_path / "run").exists() and not (tmp_path / "ev").exists()
    # The same folder with the setting on: its code is imported (so the checks above can fail).
    result = invoke("finetune", cfg, "--dry-run", "model.trust_remote_code=true")
    assert result.exit_code == 0, result.output
    assert "model: SentinelForSequenceClassification" in result.output
    assert sentinel.read_text().endswith(("configuration_sentinel", "modeling_sentinel"))


# ---------------------------------------------------------------- pickle weights


class WritesASentinel:
    """Unpickling this object calls Path.write_text on a sentinel path: what a hostile pickle does."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.write_text, (Path(self.path), "unpickled")


@pytest.fixture
def hostile_pickle_dir(tmp_path, tokenizer_dir) -> tuple[Path, Path]:
    """A tiny BERT classifier whose only weights are a pytorch_model.bin that also holds a WritesASentinel."""
    model, tokenizer = _tiny_bert(tokenizer_dir)
    folder, sentinel = tmp_path / "hostile", tmp_path / "unpickled"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({**model.state_dict(), "payload": WritesASentinel(sentinel)}, folder / "pytorch_model.bin")
    return folder, sentinel


def test_a_hostile_pickle_is_never_unpickled_unless_allow_pickle_is_on(tmp_path, tiny_config, hostile_pickle_dir,
                                                                       monkeypatch):
    folder, sentinel = hostile_pickle_dir
    opened = []
    real_load = torch.load

    def spying_load(f, *args, **kwargs):
        opened.append(Path(f).name if isinstance(f, (str, Path)) else repr(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spying_load)
    cfg = write_yaml(tmp_path / "cfg.yaml", _finetune_on(tiny_config, folder))
    result = invoke("finetune", cfg, "--dry-run")
    assert result.exit_code == 2, result.output
    assert f"{folder / 'pytorch_model.bin'} is a pickle file" in result.output
    assert "model.allow_pickle=true" in result.output and "Traceback" not in result.output
    assert "pytorch_model.bin" not in opened and not sentinel.exists()
    # Allowed, the file is unpickled (so the check above can fail); transformers' weights_only unpickler still
    # refuses the payload's callable, so even then nothing runs, and llmkit says why in one message.
    result = invoke("finetune", cfg, "--dry-run", "model.allow_pickle=true")
    assert "pytorch_model.bin" in opened
    assert result.exit_code == 2, result.output
    assert "weights-only unpickler refused an object (getattr)" in result.output, result.output
    assert "Traceback" not in result.output and not sentinel.exists()


def test_pickle_weights_are_refused_naming_the_file_and_the_setting(tmp_path, tiny_config, pickle_model_dir):
    cfg = write_yaml(tmp_path / "cfg.yaml", _finetune_on(tiny_config, pickle_model_dir))
    result = invoke("finetune", cfg)
    assert result.exit_code == 2, result.output
    assert f"{pickle_model_dir / 'pytorch_model.bin'} is a pickle file" in result.output
    assert "model.allow_pickle=true" in result.output and "save_pretrained" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_allow_pickle_loads_the_pickle_weights_with_a_warning(tmp_path, tiny_config, pickle_model_dir):
    cfg = write_yaml(tmp_path / "cfg.yaml", _finetune_on(tiny_config, pickle_model_dir))
    result = invoke("finetune", cfg, "--dry-run", "model.allow_pickle=true")
    assert result.exit_code == 0, result.output
    assert f"warning: loading pickle weights {pickle_model_dir / 'pytorch_model.bin'}" in result.output
    # every weight came from the file: nothing newly initialised
    assert "model: BertForSequenceClassification" in result.output and "newly initialised" not in result.output


def test_a_hub_model_with_only_pickle_weights_is_refused(tmp_path, tiny_config, tokenizer_dir, monkeypatch):
    """A hub id (here from an offline cache laid out like huggingface_hub's) loads with use_safetensors=True."""
    import huggingface_hub.constants

    model, tokenizer = _tiny_bert(tokenizer_dir)
    repo = tmp_path / "hub" / "models--acme--tiny-bert"
    snapshot = repo / "snapshots" / ("0" * 40)
    model.config.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    torch.save(model.state_dict(), snapshot / "pytorch_model.bin")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tiny_config["model"], tiny_config["tokenizer"] = {"name_or_path": "acme/tiny-bert"}, {}
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    result = invoke("finetune", cfg, "--dry-run")
    assert result.exit_code == 2, result.output
    assert "no safetensors weights (model.safetensors) for 'acme/tiny-bert'" in result.output
    assert "model.allow_pickle=true" in result.output and "Traceback" not in result.output
    result = invoke("finetune", cfg, "--dry-run", "model.allow_pickle=true")
    assert result.exit_code == 0, result.output
    assert "warning: model.allow_pickle=true" in result.output and "newly initialised" not in result.output


def test_eval_and_distill_refuse_pickle_weights_too(tmp_path, tiny_config, pickle_model_dir, sentiment_data):
    result = invoke("eval", pickle_model_dir, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "eval")
    assert result.exit_code == 2, result.output
    assert "pytorch_model.bin is a pickle file" in result.output and "model.allow_pickle=true" in result.output
    result = invoke("eval", pickle_model_dir, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "eval",
                    "model.allow_pickle=true")
    assert result.exit_code == 0, result.output
    assert "warning: loading pickle weights" in result.output

    config = {key: value for key, value in tiny_config.items() if key not in ("model", "tokenizer")}
    config["distill"] = {"teacher": str(pickle_model_dir), "student": {"from_teacher": {"keep_layers": [0]}}}
    result = invoke("distill", write_yaml(tmp_path / "distill.yaml", config))
    assert result.exit_code == 2, result.output
    assert "pytorch_model.bin is a pickle file" in result.output
    assert "distill.teacher_allow_pickle=true" in result.output


def test_a_pickled_peft_adapter_is_refused(tmp_path, tokenizer_dir, sentiment_data):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from llmkit.models.adapters import METADATA

    model, tokenizer = _tiny_bert(tokenizer_dir)
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    (adapter / METADATA).write_text(json.dumps({
        "method": "lora", "name": "default", "task": "sequence-classification",
        "architecture": "BertForSequenceClassification", "base_model": str(base), "base_model_path": str(base),
        "revision": None, "task_config": {"num_labels": 2, "id2label": {"0": "negative", "1": "positive"},
                                          "label2id": {"negative": 0, "positive": 1}},
        "pad_token_id": tokenizer.pad_token_id}))
    torch.save(load_file(str(adapter / "adapter_model.safetensors")), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    result = invoke("eval", adapter, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "eval")
    assert result.exit_code == 2, result.output
    assert f"{adapter / 'adapter_model.bin'} is a pickle file" in result.output
    assert "model.allow_pickle=true" in result.output


# ---------------------------------------------------------------- secrets


SECRETS = ("hf_secret123", "hf_secret456", "wandb_secret_789")


def _leaks(text: str | bytes) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode()
    return [s for s in SECRETS if s.encode() in data]


def test_secrets_never_reach_the_run_directory_or_the_output(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret123")
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_789")
    tiny_config["train"].update(max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="steps",
                                eval_steps=2)
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config)
    token = "train.hub_token=hf_secret456"
    monkeypatch.setattr(sys, "argv", ["llmkit", "finetune", str(cfg), token])  # env.json records the command
    result = invoke("finetune", cfg, token)
    assert result.exit_code == 0, result.output
    assert not _leaks(result.output), result.output
    run = tmp_path / "run"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in files)  # the Trainer's pickle of its arguments, too
    leaked = {str(p.relative_to(run)): _leaks(p.read_bytes()) for p in files if _leaks(p.read_bytes())}
    assert not leaked, leaked
    saved = (run / "config.yaml").read_text()
    assert yaml.safe_load(saved)["train"]["hub_token"] is None and "Left out (secrets" in saved
    assert "train.hub_token=<redacted>" in json.loads((run / "env.json").read_text())["command"]

    shown = invoke("config", "show", cfg, token)
    assert shown.exit_code == 0 and not _leaks(shown.output) and "hub_token: null" in shown.output

    # The redacted config.yaml resumes the run as is: the token (given again) is not a changed setting.
    resumed = invoke("finetune", run / "config.yaml", "train.resume=auto", token)
    assert resumed.exit_code == 0, resumed.output
    assert "differs" not in resumed.output and "changed training settings" not in resumed.output, resumed.output
    assert not _leaks(resumed.output)
    assert not [p for p in run.rglob("*") if p.is_file() and _leaks(p.read_bytes())]
