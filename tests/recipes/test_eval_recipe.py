"""`llmkit eval` through the real CLI: run directories, model directories, perplexity, compare, bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from llmkit.cli import app
from tests.conftest import write_csv, write_yaml

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def finetuned(tmp_path, tiny_config):
    """A finished finetune run directory (tiny BERT)."""
    tiny_config["train"].update(num_train_epochs=4, save_strategy="no")
    result = invoke("finetune", write_yaml(tmp_path / "ft.yaml", tiny_config))
    assert result.exit_code == 0, result.output
    return tmp_path / "run"


@pytest.fixture
def tiny_causal_lm(tmp_path, tokenizer_dir):
    """A model directory with a tiny random Llama and the fixture tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                         max_position_embeddings=64, pad_token_id=tok.pad_token_id))
    out = tmp_path / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_eval_of_a_run_directory_matches_the_finetune_figures(tmp_path, finetuned, sentiment_data):
    result = invoke("eval", finetuned, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ev/eval.json").read_text())
    trained = json.loads((finetuned / "metrics.json").read_text())
    assert record["task"] == "sequence-classification" and record["labels"] == ["negative", "positive"]
    for key in ("eval_accuracy", "eval_f1", "eval_precision_negative", "eval_recall_positive"):
        assert record["metrics"][key] == pytest.approx(trained[key], abs=1e-6), key
    assert record["settings"]["data"]["text_column"] == "text"
    assert (tmp_path / "ev/confusion_matrix_validation.png").stat().st_size > 0
    assert "Confusion matrix (validation)" in result.output
    matrix = record["confusion_matrices"]["validation"]
    assert sum(map(sum, matrix)) == 32


def test_eval_config_form_and_batch_size_does_not_change_metrics(tmp_path, finetuned, sentiment_data):
    figures = []
    for batch in (1, 7):
        cfg = {"model": {"name_or_path": str(finetuned)}, "data": {"validation_file": str(sentiment_data / "dev.csv")},
               "eval": {"batch_size": batch}, "output_dir": str(tmp_path / f"ev{batch}")}
        result = invoke("eval", write_yaml(tmp_path / f"ev{batch}.yaml", cfg))
        assert result.exit_code == 0, result.output
        figures.append(json.loads((tmp_path / f"ev{batch}/eval.json").read_text())["metrics"]["eval_accuracy"])
    assert figures[0] == figures[1]


def test_compare_prints_one_markdown_table(tmp_path, finetuned, sentiment_data):
    assert invoke("eval", finetuned, "--data", sentiment_data / "test.csv", "-o", tmp_path / "ev").exit_code == 0
    result = invoke("eval", "compare", finetuned, tmp_path / "ev")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("| run | eval_accuracy | eval_f1")
    assert lines[2].startswith("| run |") and lines[3].startswith("| ev |")


def test_perplexity_of_a_causal_lm_directory(tmp_path, tiny_causal_lm):
    text = tmp_path / "text.txt"
    text.write_text("the film was great and the acting was superb\n" * 20)
    result = invoke("eval", tiny_causal_lm, "--data", text, "eval.perplexity.max_length=16",
                    "eval.perplexity.stride=8", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ev/eval.json").read_text())
    m = record["metrics"]
    assert record["task"] == "perplexity" and record["perplexity_settings"]["stride"] == 8
    assert m["eval_tokens_scored"] == m["eval_text_tokens"] - 1  # every token but the first, exactly once
    assert m["eval_perplexity"] == pytest.approx(math.exp(m["eval_nll"]))
    assert m["eval_bits_per_byte"] == pytest.approx(m["eval_nll"] * m["eval_tokens_scored"] / math.log(2)
                                                    / m["eval_bytes"])


def test_perplexity_matches_a_hand_computation(tmp_path, tiny_causal_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = tmp_path / "text.txt"
    text.write_text("a dull plot and a clumsy story felt tedious")
    result = invoke("eval", tiny_causal_lm, "--data", text, "eval.perplexity.max_length=64",
                    "eval.perplexity.stride=64", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    ids = torch.tensor([tok(text.read_text(), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    nll = -logp.gather(1, ids[0, 1:, None]).mean().item()
    assert json.loads((tmp_path / "ev/eval.json").read_text())["metrics"]["eval_nll"] == pytest.approx(nll, abs=1e-4)


def test_run_directory_without_a_model(tmp_path, finetuned, sentiment_data):
    shutil.rmtree(finetuned / "model")
    result = invoke("eval", finetuned, "--data", sentiment_data / "dev.csv")
    assert result.exit_code == 2 and "run directory without a model" in result.output


def test_data_without_the_needed_columns(tmp_path, finetuned):
    bad = write_csv(tmp_path / "bad.csv", [{"review": "great", "stars": 5}])
    result = invoke("eval", finetuned, "--data", bad, "-o", tmp_path / "ev")
    assert result.exit_code == 2
    assert "'text' is not a column of the validation data" in result.output and "review, stars" in result.output


def test_stride_larger_than_the_window(tmp_path, tiny_causal_lm):
    text = tmp_path / "t.txt"
    text.write_text("hello")
    result = invoke("eval", tiny_causal_lm, "--data", text, "eval.perplexity.max_length=8",
                    "eval.perplexity.stride=16")
    assert result.exit_code == 2 and "eval.perplexity.stride: must be between 1 and max_length=8" in result.output


def test_nothing_to_evaluate(tmp_path, tiny_causal_lm):
    result = invoke("eval", tiny_causal_lm)
    assert result.exit_code == 2 and "data: required key is missing" in result.output and "--data PATH" in result.output


def test_classification_on_a_language_model_is_refused(tmp_path, tiny_causal_lm, sentiment_data):
    result = invoke("eval", tiny_causal_lm, "--data", sentiment_data / "dev.csv", "eval.task=sequence-classification")
    assert result.exit_code == 2 and "needs a model with a sequence-classification head" in result.output
    old_name = invoke("eval", tiny_causal_lm, "--data", sentiment_data / "dev.csv", "eval.task=classification")
    assert old_name.exit_code == 2 and "'sequence-classification'" in old_name.output  # the name finetune uses


def test_compare_of_a_directory_without_results(tmp_path):
    result = invoke("eval", "compare", tmp_path)
    assert result.exit_code == 2 and "neither eval.json nor metrics.json" in result.output


def test_compare_shows_the_test_splits_figures_of_perplexity_and_generation(tmp_path):
    for name, figures in (("a", {"eval_perplexity": 12.5, "test_perplexity": 13.25, "test_exact_match": 0.5}),
                          ("b", {"eval_perplexity": 11.0, "test_bits_per_byte": 1.5})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps({"metrics": figures}))
    result = invoke("eval", "compare", tmp_path / "a", tmp_path / "b")
    assert result.exit_code == 0, result.output
    header, _, first, second = result.output.strip().splitlines()
    assert header == "| run | eval_perplexity | test_perplexity | test_bits_per_byte | test_exact_match |"
    assert first == "| a | 12.5000 | 13.2500 | – | 0.5000 |"
    assert second == "| b | 11.0000 | – | 1.5000 | – |"


def test_generation_with_exact_match_writes_samples(tmp_path, tiny_causal_lm):
    rows = [{"question": f"what is {i} plus {i}", "answer": f"twice {i} is {2 * i}\n#### {2 * i}"} for i in range(5)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("eval", tiny_causal_lm, "--data", data, "eval.task=generation",
                    "eval.generation.prompt_column=question", "eval.generation.reference_column=answer",
                    "eval.generation.answer_pattern=gsm8k", "eval.generation.max_new_tokens=6",
                    "eval.batch_size=2", "-o", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "ev/eval.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "ev/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and record["metrics"]["eval_samples"] == 5
    assert [s["reference_answer"] for s in samples] == ["0", "2", "4", "6", "8"]
    assert {"prompt", "output", "reference", "predicted_answer", "correct"} <= set(samples[0])
    assert 0.0 <= record["metrics"]["eval_exact_match"] <= 1.0
    assert record["generation_settings"]["max_new_tokens"] == 6


def test_generation_columns_are_named_by_their_own_keys(tmp_path, tiny_causal_lm):
    """A prompt or reference column missing from the data is reported under eval.generation.*, the keys that
    name them (not data.text_column / data.label_column, which the user never set)."""
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "what is 1 plus 1", "answer": "#### 2"}) + "\n")
    for key, needle in (("prompt_column", "eval.generation.prompt_column: 'q' is not a column"),
                        ("reference_column", "eval.generation.reference_column: 'q' is not a column")):
        result = invoke("eval", tiny_causal_lm, "--data", data, "eval.task=generation",
                        "eval.generation.prompt_column=question", f"eval.generation.{key}=q", "-o", tmp_path / key)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert needle in text and f"Set eval.generation.{key} to one of them" in text, text
        assert "data.text_column" not in text and "data.label_column" not in text


def test_generation_on_a_masked_lm_is_refused(tmp_path, tokenizer_dir):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    out = tmp_path / "tiny-bert-mlm"
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(out)
    tok.save_pretrained(out)
    data = write_csv(tmp_path / "p.csv", [{"prompt": "hello"}])
    result = invoke("eval", out, "--data", data, "eval.task=generation")
    assert result.exit_code == 2 and "generation needs a causal LM" in result.output
    assert "masked-lm model" in result.output
    text = tmp_path / "t.txt"
    text.write_text("the film was great and the acting was superb " * 5)
    ppl = invoke("eval", out, "--data", text, "eval.perplexity.max_length=32", "eval.perplexity.stride=32",
                 "-o", tmp_path / "ev")
    assert ppl.exit_code == 0, ppl.output
    record = json.loads((tmp_path / "ev/eval.json").read_text())
    assert record["perplexity_settings"]["method"] == "fixed-seed masking"
    assert record["metrics"]["eval_tokens_scored"] > 0


def test_eval_of_a_path_that_does_not_exist(tmp_path):
    result = invoke("eval", tmp_path / "runs/nope", "--data", "x.csv")
    assert result.exit_code == 2 and "does not exist" in result.output and "run or model directory" in result.output


def test_perplexity_scores_the_validation_and_the_test_text(tmp_path, tiny_causal_lm):
    """data.test_file is scored beside data.validation_file (test_* beside eval_*), each as it is alone."""
    dev, test = tmp_path / "dev.txt", tmp_path / "test.txt"
    dev.write_text("the film was great and the acting was superb\n" * 6)
    test.write_text("a dull plot and a clumsy story felt tedious to sit through\n" * 9)
    window = ["eval.perplexity.max_length=16", "eval.perplexity.stride=8"]
    result = invoke("eval", tiny_causal_lm, "--data", dev, f"data.test_file={test}", *window, "-o", tmp_path / "both")
    assert result.exit_code == 0, result.output
    both = json.loads((tmp_path / "both/eval.json").read_text())["metrics"]
    printed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ") and line.strip()}
    assert {"eval_perplexity", "test_perplexity"} <= printed  # the table, not the tmp path (named after the test)
    for prefix, path in (("eval", dev), ("test", test)):
        alone = invoke("eval", tiny_causal_lm, "--data", path, *window, "-o", tmp_path / prefix)
        assert alone.exit_code == 0, alone.output
        single = json.loads((tmp_path / prefix / "eval.json").read_text())["metrics"]
        assert sorted(single) == sorted(k for k in both if k.startswith("eval_"))  # the one-file keys, unchanged
        for key in ("tokens_scored", "nll", "perplexity", "bits_per_byte", "bytes", "text_tokens"):
            assert both[f"{prefix}_{key}"] == pytest.approx(single[f"eval_{key}"]), (prefix, key)
    assert both["eval_perplexity"] != pytest.approx(both["test_perplexity"])


@pytest.mark.parametrize("base", ["bert", "llama"])
def test_perplexity_of_a_model_without_a_trained_lm_head_is_refused(tmp_path, tokenizer_dir, base):
    """A model directory saved from a base model (no LM head: MiniLM's case, and a decoder's body alone) would
    be scored by a newly initialised head: eval.task perplexity refuses it (exit 2), naming the missing weights."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    if base == "bert":
        model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    else:
        model = LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                       max_position_embeddings=64, pad_token_id=tok.pad_token_id))
    out = tmp_path / f"tiny-{base}-base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    text = tmp_path / "t.txt"
    text.write_text("the film was great and the acting was superb " * 5)
    result = invoke("eval", out, "--data", text, "eval.task=perplexity", "eval.perplexity.max_length=32",
                    "eval.perplexity.stride=32", "-o", tmp_path / "ev")
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert f"model.name_or_path: {out} has no trained language-model head" in output, output
    assert ("cls.predictions" if base == "bert" else "lm_head") in output and "would be meaningless" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("name, content, problem", [
    ("metrics.json", b"", "is empty"),
    ("metrics.json", b"[0.5, 0.7]", "it is a list, not an object of metric names"),
    ("eval.json", b'{"metrics": [0.5]}', 'its "metrics" is a list'),
    ("eval.json", b'{"metrics": {"eval_acc', "is not valid JSON"),
    ("eval.json", b"\xff\xfe{\x00}", "is not UTF-8"),
])
def test_compare_of_a_damaged_results_file(tmp_path, name, content, problem):
    """An empty, cut-off, non-UTF-8 or non-object eval.json / metrics.json is named with the fix (exit 2)."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "metrics.json").write_text('{"eval_accuracy": 0.5}')
    (bad / name).write_bytes(content)
    result = invoke("eval", "compare", good, bad)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert f"{bad / name}" in output and problem in output and "re-run the evaluation" in output, output
    assert "leave that directory out of the comparison" in output and "Traceback" not in output


def test_compare_of_a_path_that_does_not_exist(tmp_path):
    result = invoke("eval", "compare", tmp_path / "runs/nope")
    assert result.exit_code == 2 and f"{tmp_path / 'runs/nope'} does not exist" in result.output, result.output
    (tmp_path / "metrics.json").write_text("{}")
    result = invoke("eval", "compare", tmp_path / "metrics.json")
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'metrics.json'} is a file, not a directory" in " ".join(result.output.split())


def test_perplexity_of_a_hub_dataset_alone_is_refused(tmp_path, tiny_causal_lm):
    """Perplexity scores files; a hub dataset without a file is refused naming data.dataset_name (it was a
    TypeError)."""
    result = invoke("eval", tiny_causal_lm, "eval.task=perplexity", "data.dataset_name=some/dataset",
                    "-o", tmp_path / "ev")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "data.dataset_name: some/dataset is not read for perplexity, which scores files" in text, text
    assert "Traceback" not in text and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("option", [["-o", "OUT"], ["--smoke"], ["--data", "missing.csv"], ["--overwrite"]])
def test_compare_refuses_options_it_would_ignore(tmp_path, option):
    """compare only reads saved figures and prints them: -o, --smoke, --data and --overwrite are refused, not
    silently dropped, and nothing is written."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"eval_accuracy": 0.5}')
    option = [str(tmp_path / a) if a in ("OUT", "missing.csv") else a for a in option]
    result = invoke("eval", "compare", run, *option)
    assert result.exit_code == 2, result.output
    assert option[0].lstrip("-") in result.output and "compare takes only run or eval directories" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_generation_settings_out_of_range_are_refused(tmp_path, tiny_causal_lm):
    """Values transformers rejects mid-run (repetition_penalty <= 0, top_k < 0) or never (top_p > 1, a negative
    seed) are refused by the config check, exit 2, before anything runs; the boundaries stay valid."""
    data = write_csv(tmp_path / "p.csv", [{"prompt": "hello there"}, {"prompt": "good morning"}])
    base = ["eval", tiny_causal_lm, "--data", data, "eval.task=generation", "eval.generation.do_sample=true",
            "eval.generation.max_new_tokens=2"]
    seed_range = "must be between 0 and 2**32 - 1"
    for key, value, expected in (("repetition_penalty", 0, "must be > 0"), ("repetition_penalty", -1, "must be > 0"),
                                 ("top_k", -1, "must be >= 0"), ("top_p", 1.5, "must be > 0 and <= 1"),
                                 ("top_p", 0, "must be > 0 and <= 1"), ("seed", -1, seed_range),
                                 ("seed", 2**32, seed_range)):
        result = invoke(*base, f"eval.generation.{key}={value}", "-o", tmp_path / "ev")
        assert result.exit_code == 2, (key, value, result.output)
        assert f"eval.generation.{key}: {expected}" in result.output, (key, value, result.output)
        assert not (tmp_path / "ev").exists()
    edge = ["eval.generation.top_k=0", "eval.generation.top_p=1", "eval.generation.repetition_penalty=0.5",
            f"eval.generation.seed={2**32 - 1}"]
    result = invoke(*base, *edge, "-o", tmp_path / "edge")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("value", [2, -0.5, 0, 1])
def test_threshold_outside_zero_one_is_refused(tmp_path, tiny_causal_lm, value):
    text = tmp_path / "t.txt"
    text.write_text("the film was great\n")
    result = invoke("eval", tiny_causal_lm, "--data", text, f"eval.threshold={value}", "-o", tmp_path / "ev")
    assert result.exit_code == 2, result.output
    assert "eval.threshold: must be between 0 and 1" in result.output and not (tmp_path / "ev").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("answer_pattern", r"(\d+)(\d+)", "it has 2 capturing groups; it needs exactly one"),
    ("reference_pattern", r"answer=\d+", "it has 0 capturing groups; it needs exactly one"),
    ("answer_pattern", "gsm9k", "Did you mean the preset 'gsm8k'?"),
    ("answer_pattern", "last_numbr", "Did you mean the preset 'last_number'?"),
])
def test_answer_pattern_needs_exactly_one_group(tmp_path, tiny_causal_lm, key, value, expected):
    """The answer is the regex's one group: none (a preset's typo included) or two would extract something else."""
    data = write_csv(tmp_path / "qa.csv", [{"prompt": "2 + 2", "answer": "#### 4"}])
    result = invoke("eval", tiny_causal_lm, "--data", data, "eval.task=generation",
                    "eval.generation.reference_column=answer", f"eval.generation.{key}={value}",
                    "-o", tmp_path / "ev")
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert f"eval.generation.{key}:" in output and expected in output, output
    assert not (tmp_path / "ev").exists()


def test_labels_are_read_against_the_models_classes(tmp_path, finetuned, sentiment_data):
    """eval scores the model's classes: a data.label_names naming others is refused (not silently replaced), and
    a label outside them names the model's classes as the label set, with a fix that applies to eval."""
    result = invoke("eval", finetuned, "--data", sentiment_data / "dev.csv", "-o", tmp_path / "ev1",
                    "data.label_names=[negative, positive, neutral]")
    assert result.exit_code == 2, result.output
    assert "data.label_names: ['negative', 'positive', 'neutral'] is not the model's classes" in result.output
    assert not (tmp_path / "ev1").exists()
    neutral = write_csv(tmp_path / "neutral.csv", [{"text": "the film was a film", "label": "neutral"},
                                                   {"text": "superb acting", "label": "positive"}])
    result = invoke("eval", finetuned, "--data", neutral, "-o", tmp_path / "ev2")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "The label set (from the model's classes, its config.json id2label) is: negative, positive" in text
    assert "use a model trained with these labels" in text and "list every class in data.label_names" not in text
