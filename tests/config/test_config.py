"""Config loading and validation: strict keys, types, overrides, all problems at once."""

from __future__ import annotations

import pytest
import yaml

from llmkit.config import apply_overrides, dump_config, load_config
from llmkit.errors import ConfigError, UserError
from llmkit.recipes.finetune import FinetuneConfig


def _keys(err: ConfigError) -> list[str]:
    return [issue.key for issue in err.issues]


def test_valid_config_fills_defaults(tiny_config):
    cfg = load_config(FinetuneConfig, None, data=tiny_config)
    assert cfg.task.type == "sequence-classification"
    assert cfg.data.text_column == "text" and cfg.data.label_column == "label"
    assert cfg.train.learning_rate == 2e-3  # passthrough field given in YAML
    assert cfg.train.warmup_steps == 0  # TrainingArguments' own default
    assert cfg.train.logging_steps == 2 and cfg.train.save_total_limit == 2  # llmkit default kept


def test_all_problems_reported_at_once_with_suggestions(tiny_config):
    tiny_config["data"]["trian_file"] = "x.csv"
    tiny_config["data"]["learning_rate"] = 0.1
    tiny_config["train"]["num_train_epoch"] = 2
    tiny_config["train"]["per_device_train_batch_size"] = "big"
    tiny_config["model"]["freeze_layers"] = -1
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    text = str(exc.value)
    assert "5 problems" in text
    assert "data.trian_file: unknown key. Did you mean 'data.train_file'?" in text
    assert "Did you mean 'train.learning_rate'? (it belongs to another section)" in text
    assert "Did you mean 'train.num_train_epochs'?" in text
    assert "train.per_device_train_batch_size: expected int, got 'big'" in text
    assert "model.freeze_layers: must be >= 0" in text


def test_transformers4_names_get_the_v5_replacement(tiny_config):
    tiny_config["train"].update(warmup_ratio=0.1, evaluation_strategy="epoch", output_dir="x")
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    text = str(exc.value)
    assert "warmup_steps with a float" in text
    assert "train.eval_strategy" in text
    assert "top-level output_dir" in text


def test_choices_that_transformers_accepts_silently_are_checked(tiny_config):
    tiny_config["train"]["train_sampling_strategy"] = "by_length"
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    assert "train.train_sampling_strategy: expected one of: random, sequential, group_by_length" in str(exc.value)
    tiny_config["train"].update(train_sampling_strategy="random", ddp_backend=None)  # null: the default, accepted
    assert load_config(FinetuneConfig, None, data=tiny_config).train.ddp_backend is None


def test_trainingarguments_conflicts_are_reported_under_train(tiny_config):
    tiny_config["train"].update(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="steps",
                                save_steps=7)
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    assert exc.value.issues[0].key.startswith("train")
    assert "TrainingArguments rejected it" in str(exc.value)


def test_missing_files_name_the_key_and_the_resolved_path(tiny_config, tmp_path):
    tiny_config["data"]["train_file"] = "nowhere/train.csv"
    tiny_config["data"]["data_dir"] = str(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    assert _keys(exc.value) == ["data.train_file"]
    assert str(tmp_path / "nowhere/train.csv") in str(exc.value)


def test_data_dir_resolves_relative_files(tiny_config, sentiment_data):
    tiny_config["data"].update(data_dir=str(sentiment_data), train_file="train.csv", validation_file="dev.csv")
    cfg = load_config(FinetuneConfig, None, data=tiny_config)
    assert cfg.data.train_file == str(sentiment_data / "train.csv")


def test_globs_expand_to_sorted_files(tiny_config, sentiment_data):
    tiny_config["data"]["train_file"] = str(sentiment_data / "*.csv")
    cfg = load_config(FinetuneConfig, None, data=tiny_config)
    assert [p.rsplit("/", 1)[1] for p in cfg.data.train_file] == ["dev.csv", "test.csv", "train.csv"]


def test_model_needs_exactly_one_source(tiny_config):
    tiny_config["model"]["name_or_path"] = "some/model"
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    assert "exactly one of model.name_or_path or model.from_config" in str(exc.value)


def test_pkg_model_reference_that_is_not_installed(tiny_config):
    del tiny_config["model"]["from_config"]
    tiny_config["model"]["name_or_path"] = "pkg:no_such_model_package_xyz"
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    assert "pip install no-such-model-package-xyz" in str(exc.value)


def test_overrides_parse_yaml_values_and_create_sections():
    overrides = ["train.seed=7", "train.learning_rate=3e-5", "data.label_names=[a, b]", "output_dir=null"]
    data = apply_overrides({"train": {"seed": 1}}, overrides)
    assert data == {"train": {"seed": 7, "learning_rate": "3e-5"}, "data": {"label_names": ["a", "b"]},
                    "output_dir": None}


def test_float_fields_accept_yaml_exponents_without_a_dot(tiny_config):
    cfg = load_config(FinetuneConfig, None, ["train.learning_rate=3e-5"], data=tiny_config)
    assert cfg.train.learning_rate == pytest.approx(3e-5)


def test_malformed_override_is_an_error():
    with pytest.raises(ConfigError) as exc:
        apply_overrides({}, ["train.learning_rate"])
    assert "key.path=value" in str(exc.value)


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError) as exc:
        apply_overrides({"output_dir": "x"}, ["output_dir.sub=1"])
    assert "not a section" in str(exc.value)


def test_resolved_config_round_trips(tiny_config, tmp_path):
    cfg = load_config(FinetuneConfig, None, data=tiny_config)
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg, "finetune"))
    again = load_config(FinetuneConfig, path)
    assert dump_config(again).split("\n", 1)[1] == dump_config(cfg).split("\n", 1)[1]
    assert yaml.safe_load(path.read_text())["train"]["precision"] == "fp32"


def test_yaml_syntax_error_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(FinetuneConfig, bad)


def test_task_options_of_another_task_are_refused(tiny_config):
    tiny_config["task"].update(type="token-classification", multi_label=True)
    with pytest.raises(ConfigError) as exc:
        load_config(FinetuneConfig, None, data=tiny_config)
    assert "task.multi_label: only applies to task.type: sequence-classification" in str(exc.value)


def test_unquoted_no_is_the_strategy_no_not_a_boolean(tmp_path, tiny_config):
    """YAML 1.1 reads `eval_strategy: no` as False; where "no" is a choice, llmkit takes it as "no"."""
    text = yaml.safe_dump(tiny_config).replace("save_strategy: epoch", "save_strategy: no")
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    cfg = load_config(FinetuneConfig, path, ["train.eval_strategy=no"])
    assert cfg.train.eval_strategy == "no" and cfg.train.save_strategy == "no"
    with pytest.raises(ConfigError, match="train.eval_strategy"):
        load_config(FinetuneConfig, path, ["train.eval_strategy=yes"])  # True: no "yes" among the choices
