"""llmkit distill through the real CLI: a tiny BERT teacher fine-tuned here and saved like a finetune run's
model, students built from its layers / from config / from a path, the teacher cache, teacher-labelled texts,
causal-LM KD on a tiny Llama, and the bad-input cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import sentiment_rows, train_on_sentiment, write_csv, write_yaml
from tests.recipes.helpers import invoke, save_model_dir, tiny_bert_config


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir) -> str:
    """A 4-layer BERT sentiment classifier (negative/positive), briefly trained, saved as a model directory."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_hidden_layers=4))
    train_on_sentiment(model, tokenizer)
    return save_model_dir(tmp_path_factory, "teacher", model, tokenizer)


@pytest.fixture
def distill_config(tiny_config, teacher_dir) -> dict:
    cfg = {key: value for key, value in tiny_config.items() if key not in ("model", "tokenizer")}
    cfg["distill"] = {"teacher": teacher_dir, "student": {"from_teacher": {"keep_layers": [0, 2]}},
                      "alpha": 0.5, "temperature": 2.0}
    cfg["train"] = {**cfg["train"], "num_train_epochs": 3, "save_strategy": "no"}
    return cfg


def run_distill(tmp_path, config: dict, *extra, name="distill.yaml"):
    result = invoke("distill", write_yaml(tmp_path / name, config), *extra)
    assert result.exit_code == 0, result.output
    return result, Path(config["output_dir"])


def weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]


def test_kd_run_reports_teacher_and_student_and_leaves_the_teacher_alone(tmp_path, distill_config, teacher_dir,
                                                                         monkeypatch):
    from llmkit.training import distill

    trainers = []
    init = distill.DistillTrainer.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        trainers.append(self)

    monkeypatch.setattr(distill.DistillTrainer, "__init__", keep)
    before = weights(teacher_dir)
    result, run = run_distill(tmp_path, distill_config)
    assert "student: BertForSequenceClassification from the teacher's layers [0, 2], 2 layers" in result.output
    assert "loss: 0.5 x CE(hard labels) + 0.5 x tau^2 x KL(teacher || student), tau=2" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["teacher_eval_accuracy"] >= 0.9 and metrics["eval_accuracy"] >= 0.9
    assert metrics["accuracy_retention"] == round(metrics["eval_accuracy"] / metrics["teacher_eval_accuracy"], 4)
    assert metrics["student_params"] < metrics["teacher_params"]
    assert metrics["teacher_examples_per_second"] > 0 and metrics["student_examples_per_second"] > 0
    steps = [h for h in history(run) if "loss" in h]
    assert steps and all({"loss_ce", "loss_kd"} <= set(h) and "loss_feature" not in h for h in steps)
    for h in steps:  # the logged loss is the weighted sum of the logged terms
        assert h["loss"] == pytest.approx(0.5 * h["loss_ce"] + 0.5 * h["loss_kd"], rel=1e-3)
    report = (run / "report.md").read_text()
    assert "## Teacher vs student" in report and "examples/s (eval set)" in report
    assert json.loads((run / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    after = weights(teacher_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher's files
    teacher = trainers[0].teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    live = teacher.state_dict()
    assert all(torch.equal(before[k], live[k]) for k in before)  # and the teacher in memory, after training


def test_alpha_one_beta_zero_matches_plain_finetune_on_the_same_seed(tmp_path, tiny_config, distill_config,
                                                                     teacher_dir):
    """With the KD and feature terms weighted 0, distill trains exactly what finetune trains."""
    finetune = dict(tiny_config, model={"name_or_path": teacher_dir}, output_dir=str(tmp_path / "ft"))
    finetune.pop("tokenizer")
    finetune["train"] = distill_config["train"]
    assert invoke("finetune", write_yaml(tmp_path / "ft.yaml", finetune)).exit_code == 0
    distill_config["distill"].update(alpha=1.0, student={"name_or_path": teacher_dir})
    result, run = run_distill(tmp_path, distill_config)
    assert "loss: 1 x CE(hard labels)" in result.output
    ft, kd = weights(tmp_path / "ft" / "model"), weights(run / "model")
    assert ft.keys() == kd.keys()
    assert all(torch.allclose(ft[k], kd[k], atol=1e-6) for k in ft)
    ft_metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    kd_metrics = json.loads((run / "metrics.json").read_text())
    assert kd_metrics["eval_loss"] == pytest.approx(ft_metrics["eval_loss"], rel=1e-5)
    assert kd_metrics["train_loss"] == pytest.approx(ft_metrics["train_loss"], rel=1e-5)


def test_cached_teacher_trains_like_the_live_teacher_and_is_reused(tmp_path, distill_config):
    live_config = dict(distill_config, output_dir=str(tmp_path / "live"))
    _, live = run_distill(tmp_path, live_config, name="live.yaml")
    distill_config["distill"]["cache_teacher"] = True
    first, run = run_distill(tmp_path, distill_config)
    assert "teacher outputs: computing for 64 examples" in first.output
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (live, run))
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    built = dict(b), history(run), weights(run / "model")  # the run that built the cache, before it is replaced
    second, _ = run_distill(tmp_path, distill_config, "--overwrite")
    assert "teacher outputs: from cache" in second.output and "computing for" not in second.output
    c = json.loads((run / "metrics.json").read_text())
    for key in ("train_loss", "eval_loss", "eval_accuracy", "teacher_eval_accuracy"):  # the cached run reproduces
        assert c[key] == pytest.approx(built[0][key], rel=1e-6, abs=1e-9), key
    assert [h["loss"] for h in history(run) if "loss" in h] == \
        pytest.approx([h["loss"] for h in built[1] if "loss" in h], rel=1e-6)
    again = weights(run / "model")
    assert all(torch.allclose(again[k], built[2][k], atol=1e-6) for k in built[2])


def test_feature_loss_with_a_narrower_student_learns_a_projection_and_saves_a_plain_model(tmp_path,
                                                                                          distill_config):
    distill_config["distill"].update(
        beta=1.0, layer_map={0: 1, 1: 3},
        student={"from_config": {"family": "bert", "num_layers": 2, "hidden_size": 16, "num_heads": 2,
                                 "max_position_embeddings": 64}})
    result, run = run_distill(tmp_path, distill_config)
    assert "incl. 1088 in projections" in result.output  # two 16 -> 32 linear maps with bias: 2 x (512 + 32)
    assert "feature loss over layers (student->teacher) 0->1, 1->3" in result.output
    steps = [h for h in history(run) if "loss" in h]
    assert all({"loss_ce", "loss_kd", "loss_feature"} <= set(h) for h in steps)
    assert steps[-1]["loss_feature"] < steps[0]["loss_feature"]
    saved = weights(run / "model")
    assert not any("distill_projections" in k for k in saved)
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(run / "model").config.hidden_size == 16


def test_adapter_run_as_teacher(tmp_path, distill_config, teacher_dir):
    adapter = {"model": {"name_or_path": teacher_dir}, "task": distill_config["task"], "data": distill_config["data"],
               "adapter": {"method": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
               "train": dict(distill_config["train"], num_train_epochs=1), "output_dir": str(tmp_path / "lora")}
    result = invoke("adapter", write_yaml(tmp_path / "lora.yaml", adapter))
    assert result.exit_code == 0, result.output
    distill_config["distill"]["teacher"] = str(tmp_path / "lora")
    result, run = run_distill(tmp_path, distill_config)
    assert "teacher: PeftModelForSequenceClassification" in result.output or "teacher: PeftModel" in result.output
    assert json.loads((run / "metrics.json").read_text())["teacher_eval_accuracy"] >= 0.9


def test_teacher_labelled_texts_are_written_filtered_and_trained_on(tmp_path, distill_config):
    train_texts = [r["text"] for r in sentiment_rows(64, seed=1)]
    extra = [r["text"] for r in sentiment_rows(40, seed=11)]
    (tmp_path / "unlabeled.txt").write_text("\n".join(extra + train_texts[:5] + ["", extra[0]]) + "\n")
    distill_config["distill"].update(unlabeled=str(tmp_path / "unlabeled.txt"), unlabeled_targets="hard",
                                     unlabeled_min_confidence=0.6)
    result, run = run_distill(tmp_path, distill_config)
    rows = [json.loads(line) for line in (run / "teacher_labeled.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == extra  # empty lines, duplicates and training texts left out
    assert all(r["kept"] == (r["confidence"] >= 0.6) for r in rows)
    assert all(r["label"] == max(r["probabilities"], key=r["probabilities"].get) for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["unlabeled_texts"] == 40 and metrics["unlabeled_used"] == sum(r["kept"] for r in rows) > 0
    plan = next(line for line in result.output.splitlines() if line.startswith("plan:"))
    steps = 3 * -(-(64 + metrics["unlabeled_used"]) // 8)  # epochs x batches of the labelled + kept texts
    assert plan.startswith(f"plan: {steps} optimizer steps"), plan
    assert "## Teacher-labelled data" in (run / "report.md").read_text()
    again = invoke("distill", tmp_path / "distill.yaml", "--overwrite")
    assert again.exit_code == 0 and "teacher labels: 40 texts from cache" in again.output


@pytest.fixture(scope="module")
def llama_teacher(tmp_path_factory, chat_tokenizer_dir) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4,
                                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    return save_model_dir(tmp_path_factory, "llama-teacher", model, tokenizer)


@pytest.fixture
def lm_config(tmp_path, llama_teacher) -> dict:
    data = tmp_path / "lm"
    data.mkdir()
    rows = [{"instruction": f"say a {w} word", "input": "", "output": f"{w} and wonderful"}
            for w in ("great", "awful") * 12]
    (data / "train.json").write_text(json.dumps(rows))
    (data / "dev.json").write_text(json.dumps(rows[:6]))
    return {"distill": {"teacher": llama_teacher, "student": {"from_teacher": {"every": 2}}, "alpha": 0.5,
                        "temperature": 1.0},
            "task": {"type": "causal-lm"},
            "data": {"train_file": str(data / "train.json"), "validation_file": str(data / "dev.json"),
                     "max_length": 64},
            "train": {"num_train_epochs": 2, "learning_rate": 3e-3, "per_device_train_batch_size": 4,
                      "logging_steps": 2, "seed": 0, "precision": "fp32", "save_strategy": "no",
                      "disable_tqdm": True},
            "output_dir": str(tmp_path / "lm-run")}


@pytest.mark.parametrize("packing", [True, False])
def test_causal_lm_token_level_kd_cached_equals_live(tmp_path, lm_config, packing):
    lm_config["task"]["packing"] = packing
    lm_config["distill"]["beta"] = 0.5
    _, live = run_distill(tmp_path, dict(lm_config, output_dir=str(tmp_path / "live")), name="live.yaml")
    lm_config["distill"]["cache_teacher"] = True
    result, run = run_distill(tmp_path, lm_config)
    assert "teacher outputs: computing for 24 examples" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_perplexity"] > 1 and metrics["teacher_eval_perplexity"] > 1
    assert metrics["student_params"] < metrics["teacher_params"]
    cached_steps, live_steps = [h for h in history(run) if "loss" in h], [h for h in history(live) if "loss" in h]
    assert all({"loss_ce", "loss_kd", "loss_feature"} <= set(h) for h in cached_steps)
    # The cache stores vocabulary-sized logits as float16: the same training up to that rounding.
    for a, b in zip(cached_steps, live_steps):
        assert a["loss_kd"] == pytest.approx(b["loss_kd"], rel=2e-2, abs=1e-3)
        assert a["loss_ce"] == pytest.approx(b["loss_ce"], rel=2e-2)


# ---------------------------------------------------------------- bad input


def fails(tmp_path, config: dict, *needles: str):
    result = invoke("distill", write_yaml(tmp_path / "bad.yaml", config))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output
    return result


def test_lm_kd_refuses_a_student_with_another_vocabulary(tmp_path, lm_config, tmp_path_factory, tokenizer_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # WordPiece, not the teacher's BPE
    other = tmp_path / "other-student"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
                                 max_position_embeddings=128)).save_pretrained(other)
    tokenizer.save_pretrained(other)
    lm_config["distill"]["student"] = {"name_or_path": str(other)}
    fails(tmp_path, lm_config, "distill.student", "one vocabulary", "student.from_teacher")
    assert not Path(lm_config["output_dir"]).exists() or not (Path(lm_config["output_dir"]) / "model").exists()


def test_layer_map_naming_missing_layers(tmp_path, distill_config):
    distill_config["distill"].update(beta=1.0, layer_map={5: 1})
    fails(tmp_path, distill_config, "distill.layer_map: student layer 5 does not exist", "2 layers (0-1)")
    distill_config["distill"]["layer_map"] = {0: 9}
    fails(tmp_path, distill_config, "distill.layer_map: teacher layer 9", "4 layers (0-3)")


@pytest.mark.parametrize("key, value, needle", [
    ("temperature", 0, "distill.temperature: must be > 0, got 0"),
    ("temperature", -1.5, "distill.temperature: must be > 0, got -1.5"),
    ("alpha", 1.5, "distill.alpha: must be between 0 and 1"),
    ("alpha", -0.1, "distill.alpha: must be between 0 and 1"),
    ("beta", -1, "distill.beta: must be >= 0"),
])
def test_loss_weights_out_of_range(tmp_path, distill_config, key, value, needle):
    distill_config["distill"][key] = value
    fails(tmp_path, distill_config, needle)


def test_teacher_run_directory_without_a_model(tmp_path, distill_config):
    unfinished = tmp_path / "runs" / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("task: {type: sequence-classification}\n")
    distill_config["distill"]["teacher"] = str(unfinished)
    fails(tmp_path, distill_config, "distill.teacher", "run directory without a model", "did not finish")
    distill_config["distill"]["teacher"] = str(tmp_path / "nowhere")
    fails(tmp_path, distill_config, "distill.teacher", "no model directory")


def test_other_refusals(tmp_path, distill_config):
    distill_config["distill"]["student"] = {"from_teacher": {"keep_layers": [0, 7]}}
    fails(tmp_path, distill_config, "distill.student.from_teacher.keep_layers", "4 layers")
    distill_config["distill"]["student"] = {"from_teacher": {"keep_layers": [0]}}
    distill_config["data"]["label_names"] = ["positive", "negative"]
    fails(tmp_path, distill_config, "data.label_names", "teacher's classes")
    distill_config["data"].pop("label_names")
    distill_config["distill"].update(cache_teacher=True, cache_limit_gb=1e-9)
    fails(tmp_path, distill_config, "distill.cache_teacher", "cache_limit_gb")
    distill_config["distill"].update(cache_teacher=False, cache_limit_gb=4.0, unlabeled=str(tmp_path / "nope.txt"))
    fails(tmp_path, distill_config, "distill.unlabeled: file not found")
    distill_config["distill"].pop("unlabeled")
    distill_config["task"] = {"type": "token-classification"}
    fails(tmp_path, distill_config, "task.type", "sequence-classification and causal-lm")
    distill_config["task"] = {"type": "sequence-classification"}
    distill_config["train"]["label_smoothing_factor"] = 0.1  # read only by transformers' loss, not distill's
    fails(tmp_path, distill_config, "train.label_smoothing_factor: 0.1", "DistillTrainer", "Remove it")
    distill_config["train"].pop("label_smoothing_factor")
    distill_config["distill"]["student"] = {}  # no source at all: named by the student's own keys
    fails(tmp_path, distill_config, "distill.student.name_or_path: give exactly one of distill.student.name_or_path "
          "or distill.student.from_config (or distill.student.from_teacher)")
    distill_config["distill"]["student"] = {"from_teacher": {"keep_layers": [0]}}
    for key, value in (("sample_prompts", ["Say hi"]), ("sample_max_new_tokens", 8)):  # finetune's samples.jsonl
        distill_config["task"] = {"type": "causal-lm", key: value}
        fails(tmp_path, distill_config, f"task.{key}", "writes no sample generations", "eval.task: generation")


def test_different_tokenizer_needs_the_cache(tmp_path, distill_config, tmp_path_factory):
    from tests.conftest import train_tokenizer

    other = train_tokenizer(tmp_path / "other-tok", vocab_size=150)
    distill_config["distill"]["student"] = {"from_config": {"family": "bert", "num_layers": 1, "hidden_size": 16,
                                                            "num_heads": 2, "max_position_embeddings": 64}}
    distill_config["tokenizer"] = {"name_or_path": other}
    fails(tmp_path, distill_config, "distill.cache_teacher", "tokenizer differs")
    distill_config["distill"]["cache_teacher"] = True  # then the teacher reads the texts its own way, once
    result, run = run_distill(tmp_path, distill_config)
    assert "teacher outputs: computing for 64 examples" in result.output
    kd = [h["loss_kd"] for h in history(run) if "loss_kd" in h]
    assert kd[-1] < kd[0]  # the student learns the teacher's distribution through its own tokenizer
    # the teacher is scored (and timed) on the validation texts tokenized its own way, not on the student's ids:
    # the same figures as a run whose student shares the teacher's tokenizer
    other_run = json.loads((run / "metrics.json").read_text())
    distill_config.pop("tokenizer")
    distill_config["distill"]["student"] = {"from_teacher": {"keep_layers": [0]}}
    distill_config["output_dir"] = str(tmp_path / "same-tokenizer")
    _, same = run_distill(tmp_path, distill_config, name="same.yaml")
    same_run = json.loads((same / "metrics.json").read_text())
    for key in ("teacher_eval_loss", "teacher_eval_accuracy"):
        assert other_run[key] == pytest.approx(same_run[key], abs=1e-5), key


def test_unlabeled_file_without_the_text_column(tmp_path, distill_config):
    write_csv(tmp_path / "extra.csv", [{"review": "great film", "stars": 5}])
    distill_config["distill"]["unlabeled"] = str(tmp_path / "extra.csv")
    fails(tmp_path, distill_config, "distill.unlabeled_text_column", "'text' is not a column", "review")


@pytest.mark.parametrize("requested", [None, "sdpa"])
def test_the_students_attention_setting_is_honoured_on_cpu(tmp_path, distill_config, requested, monkeypatch):
    """distill.student.attn_implementation plays the part model.attn_implementation plays elsewhere: set, it
    keeps the student's attention; unset, fp32 training with attention dropout switches to eager and names it."""
    from llmkit.training import distill
    from llmkit.training.arguments import attention_implementation

    timed = {}
    speed = distill.inference_speed

    def spy(models, *args, **kwargs):
        timed.update({name: attention_implementation(view[0]) for name, view in models.items()})
        return speed(models, *args, **kwargs)

    monkeypatch.setattr(distill, "inference_speed", spy)
    distill_config["distill"]["student"]["attn_implementation"] = requested
    distill_config["train"].update(max_steps=2, precision="fp32")
    result, run = run_distill(tmp_path, distill_config)
    assert timed == {"teacher": "sdpa", "student": "sdpa"}  # timed alike: the training-only switch is undone
    expected = "sdpa" if requested else "eager"
    assert json.loads((run / "env.json").read_text())["attn_implementation"] == expected
    assert ("attention: eager for attention dropout on CPU" in result.output) == (requested is None), result.output
    assert requested or "distill.student.attn_implementation overrides" in result.output


def test_inference_speedup_is_the_student_speed_over_the_teacher_speed(tmp_path, distill_config):
    """metrics.json's inference_speedup is student examples/s over teacher examples/s (rounded to 3 decimals,
    from the unrounded speeds; the two speeds beside it are rounded to 0.1)."""
    distill_config["train"].update(max_steps=2)
    _, run = run_distill(tmp_path, distill_config)
    metrics = json.loads((run / "metrics.json").read_text())
    teacher, student = metrics["teacher_examples_per_second"], metrics["student_examples_per_second"]
    speedup = metrics["inference_speedup"]
    assert teacher > 0.05 and student > 0.05 and speedup == round(speedup, 3)
    # the ratio of the recorded speeds, give or take their rounding (0.05 each) and the speedup's own (0.0005)
    low, high = (student - 0.05) / (teacher + 0.05), (student + 0.05) / (teacher - 0.05)
    assert low - 0.0005 <= speedup <= high + 0.0005, (speedup, student / teacher)


def with_a_long_row(tmp_path, config: dict, words: int) -> None:
    """The training data plus one row of `words` words (each one WordPiece token), data.max_length above it."""
    rows = sentiment_rows(64, seed=1) + [{"text": " ".join(["great"] * words), "label": "positive"}]
    config["data"].update(train_file=str(write_csv(tmp_path / "long" / "train.csv", rows)), max_length=100000)


@pytest.mark.parametrize("who, student, words", [
    ("student", {"from_config": {"family": "bert", "num_layers": 1, "hidden_size": 16, "num_heads": 2,
                                 "max_position_embeddings": 32}}, 40),  # fits the teacher's 64, not the student's
    ("teacher", {"from_config": {"family": "bert", "num_layers": 1, "hidden_size": 16, "num_heads": 2,
                                 "max_position_embeddings": 512}}, 100),  # fits the student, not the teacher
    ("teacher", {"from_teacher": {"keep_layers": [0, 2]}}, 100),
])
def test_rows_longer_than_a_models_positions_are_refused_before_the_run_directory(tmp_path, distill_config, who,
                                                                                   student, words):
    distill_config["distill"]["student"] = student
    with_a_long_row(tmp_path, distill_config, words)
    limit = 32 if who == "student" else 64
    needles = ("data.max_length", f"only {limit} positions", f"set data.max_length={limit}", f"distill.{who}")
    result = invoke("distill", write_yaml(tmp_path / "bad.yaml", distill_config), "--dry-run")
    assert result.exit_code == 2 and all(n in result.output for n in needles), result.output
    fails(tmp_path, distill_config, *needles)
    assert not Path(distill_config["output_dir"]).exists()


def test_unlabeled_texts_longer_than_the_teachers_positions_are_refused(tmp_path, distill_config):
    (tmp_path / "unlabeled.txt").write_text(" ".join(["great"] * 100) + "\ngreat film\n")
    distill_config["data"]["max_length"] = 100000
    distill_config["distill"].update(unlabeled=str(tmp_path / "unlabeled.txt"))
    fails(tmp_path, distill_config, "data.max_length", "distill.unlabeled", "only 64 positions")
    assert not Path(distill_config["output_dir"]).exists()


def test_a_teacher_without_a_trained_classification_head_is_refused(tmp_path, distill_config, tokenizer_dir):
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    masked = tmp_path / "masked-lm"
    model = BertForMaskedLM(tiny_bert_config(tokenizer, num_hidden_layers=4))  # its config names the classes
    model.save_pretrained(masked)
    tokenizer.save_pretrained(masked)
    distill_config["distill"]["teacher"] = str(masked)
    fails(tmp_path, distill_config, "distill.teacher", "masked-lm", "llmkit finetune")
    assert not Path(distill_config["output_dir"]).exists()


def test_a_teacher_whose_head_weights_are_missing_is_refused(tmp_path, distill_config, tokenizer_dir):
    """A config that says sequence classifier over weights without the head: the head would be random."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    headless = tmp_path / "headless"
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_hidden_layers=4))
    model.save_pretrained(headless)
    tokenizer.save_pretrained(headless)
    state = load_file(str(headless / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("classifier.")}, str(headless / "model.safetensors"),
              metadata={"format": "pt"})
    distill_config["distill"]["teacher"] = str(headless)
    fails(tmp_path, distill_config, "distill.teacher", "newly initialised", "classifier.weight", "llmkit finetune")
    assert not Path(distill_config["output_dir"]).exists()


def test_feature_loss_with_an_empty_layer_map_is_refused(tmp_path, distill_config):
    distill_config["distill"].update(beta=1.0, layer_map={})
    fails(tmp_path, distill_config, "distill.layer_map", "at least one", "beta: 0")
    assert not Path(distill_config["output_dir"]).exists()
