"""finetune / adapter task.type: preference (DPO, IPO) through the real CLI on a 2-layer Llama built from a config,
and the pair data (rendering, masking, dropping, truncation) on the tests' chat tokenizer."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_yaml
from tests.recipes.helpers import invoke

GOOD, BAD = "great and wonderful", "awful and terrible"


def pair_rows(n: int) -> list[dict]:
    return [{"prompt": f"say a {word} word", "chosen": GOOD if word == "good" else BAD,
             "rejected": BAD if word == "good" else GOOD} for word in ("good", "bad") * (n // 2)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def pref_config(tmp_path, chat_tokenizer_dir):
    data = tmp_path / "data"
    data.mkdir()
    return {
        "model": {"from_config": {"family": "llama", "num_layers": 2, "hidden_size": 32, "num_heads": 2,
                                  "intermediate_size": 64, "max_position_embeddings": 128}},
        "tokenizer": {"name_or_path": chat_tokenizer_dir},
        "task": {"type": "preference", "sample_max_new_tokens": 4},
        "preference": {"method": "dpo", "beta": 0.5},
        "data": {"train_file": write_jsonl(data / "train.jsonl", pair_rows(32)),
                 "validation_file": write_jsonl(data / "dev.jsonl", pair_rows(8)), "max_length": 64},
        "train": {"num_train_epochs": 4, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 2,
                  "seed": 0, "precision": "fp32", "save_strategy": "no", "disable_tqdm": True},
        "output_dir": str(tmp_path / "run"),
    }


@pytest.fixture(scope="module")
def chat_tokenizer(chat_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_tokenizer_dir)


def use_lora_on_a_saved_base(tmp_path, pref_config, chat_tokenizer) -> None:
    """Point the config at a 2-layer Llama saved with the chat tokenizer and train LoRA on it (llmkit adapter)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path / "base"
    config = LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128,
                         eos_token_id=chat_tokenizer.eos_token_id, pad_token_id=chat_tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(base)
    chat_tokenizer.save_pretrained(base)
    pref_config["model"] = {"name_or_path": str(base)}
    del pref_config["tokenizer"]
    pref_config["adapter"] = {"method": "lora", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


def history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["dpo", "ipo", "simpo", "orpo"])
def test_full_fine_tuning_learns_the_preference(tmp_path, pref_config, method):
    pref_config["preference"] = {"method": method, "beta": 0.5}
    result = invoke("finetune", write_yaml(tmp_path / "pref.yaml", pref_config))
    assert result.exit_code == 0, result.output
    reference = f"reference: none ({method} is reference-free)" if method in ("simpo", "orpo") \
        else "reference: a frozen copy of the model"
    assert reference in result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_rewards/accuracies"] == 1.0, metrics
    assert metrics["eval_rewards/margins"] > 0 and metrics["eval_rewards/chosen"] > metrics["eval_rewards/rejected"]
    assert {f"eval_{k}" for k in ("logps/chosen", "logps/rejected", "logps/accuracies")} <= set(metrics)
    train_logs = [h for h in history(run) if "loss" in h]
    assert "rewards/accuracies" in train_logs[-1] and train_logs[-1]["loss"] < train_logs[0]["loss"]
    report = (run / "report.md").read_text()
    assert "Preference figures (validation)" in report and "![implicit rewards" in report
    assert (run / "rewards.png").stat().st_size > 0
    assert (run / "model/config.json").is_file()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and samples[0]["reference"] == GOOD
    if method == "dpo":  # its random start cannot be rebuilt: eval needs the reference named
        refused = invoke("eval", run, "--data", pref_config["data"]["validation_file"], "eval.task=preference",
                         "-o", tmp_path / "eval")
        assert refused.exit_code == 2 and "trained a model built from a config" in refused.output, refused.output
        assert "Set eval.preference.reference" in refused.output and not (tmp_path / "eval").exists()


def test_first_step_matches_the_reference(tmp_path, pref_config):
    """Before any update the policy is its reference: every reward is 0 and the DPO loss is log 2."""
    pref_config["train"].update(eval_on_start=True, eval_strategy="epoch", num_train_epochs=1)
    result = invoke("finetune", write_yaml(tmp_path / "pref.yaml", pref_config))
    assert result.exit_code == 0, result.output
    first = next(h for h in history(tmp_path / "run") if "eval_loss" in h)
    assert first["eval_loss"] == pytest.approx(0.693147, abs=1e-5)
    assert first["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_lora_reference_is_the_base_with_the_adapter_disabled(tmp_path, pref_config, chat_tokenizer):
    use_lora_on_a_saved_base(tmp_path, pref_config, chat_tokenizer)
    pref_config["train"]["learning_rate"] = 2e-2
    result = invoke("adapter", write_yaml(tmp_path / "pref.yaml", pref_config))
    assert result.exit_code == 0, result.output
    assert "reference: the base model with the adapter disabled (no second copy in memory)" in result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_rewards/accuracies"] == 1.0 and metrics["eval_rewards/margins"] > 0, metrics
    meta = json.loads((run / "adapter/llmkit_adapter.json").read_text())
    assert meta["task"] == "preference"
    (tmp_path / "text.txt").write_text("great and wonderful\nawful and terrible\n" * 4)
    scored = invoke("eval", run, "--data", tmp_path / "text.txt", "-o", tmp_path / "eval")  # a causal LM to eval
    assert scored.exit_code == 0, scored.output
    assert json.loads((tmp_path / "eval/eval.json").read_text())["task"] == "perplexity"
    check_preference_eval(tmp_path, run, metrics, pref_config["data"]["validation_file"])


def check_preference_eval(tmp_path, run, trained: dict, pairs: str) -> None:
    """eval.task preference on the run's validation pairs gives the figures training reported (the reference is
    the base with the adapter disabled, beta from the run); the untuned base gets only the log-prob row."""
    dev = ("--data", pairs, "eval.task=preference", "eval.preference.max_new_tokens=4")
    tuned = invoke("eval", run, *dev, "-o", tmp_path / "eval-tuned")
    assert tuned.exit_code == 0, tuned.output
    assert "reference: the base model (the adapter disabled)" in tuned.output
    record = json.loads((tmp_path / "eval-tuned/eval.json").read_text())
    figures = record["metrics"]
    for key in ("eval_rewards/accuracies", "eval_rewards/margins", "eval_rewards/chosen", "eval_logps/accuracies"):
        assert figures[key] == pytest.approx(trained[key], rel=1e-4, abs=1e-5), key
    assert figures["eval_logps/accuracies"] > figures["eval_reference_logps/accuracies"], figures
    assert "implicit reward (beta 0.5)" in (tmp_path / "eval-tuned/report.md").read_text()
    samples = [json.loads(line) for line in (tmp_path / "eval-tuned/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and samples[0]["chosen"] == GOOD and samples[0]["output_reference"] is not None
    base = invoke("eval", tmp_path / "base", *dev, "-o", tmp_path / "eval-base")
    assert base.exit_code == 0, base.output
    untuned = json.loads((tmp_path / "eval-base/eval.json").read_text())["metrics"]
    assert untuned["eval_logps/accuracies"] == figures["eval_reference_logps/accuracies"]
    assert not any(k.startswith("eval_rewards") for k in untuned)  # no reference: only the log-prob row
    table = invoke("eval", "compare", tmp_path / "eval-base", tmp_path / "eval-tuned")
    assert "eval_logps/accuracies" in table.output and "eval_rewards/accuracies" in table.output, table.output


def test_dry_run_counts_pairs_and_names_the_reference(tmp_path, pref_config):
    rows = pair_rows(8) + [{"prompt": "p", "chosen": "same", "rejected": "same"},
                           {"prompt": "p", "chosen": "", "rejected": "x"},
                           {"prompt": "hello " * 80, "chosen": GOOD, "rejected": BAD}]
    pref_config["data"]["train_file"] = write_jsonl(tmp_path / "data/train.jsonl", rows)
    result = invoke("finetune", write_yaml(tmp_path / "pref.yaml", pref_config), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "train 9 examples" in result.output
    assert "1 truncated to data.max_length (prompt first), dropped: 1 with identical answers, 1 with an empty " \
           "answer" in result.output
    assert "reference: a frozen copy of the model" in result.output and "plan: " in result.output
    assert not (tmp_path / "run").exists()
    pref_config["task"]["too_long"] = "error"
    result = invoke("finetune", write_yaml(tmp_path / "pref.yaml", pref_config), "--dry-run")
    assert result.exit_code == 2 and "1 pair(s) are longer than 64 tokens" in result.output


# ---------------------------------------------------------------- pair data


def test_pair_masks_the_prompt_like_sft(chat_tokenizer):
    """The prompt is the chat-rendered user turn and the generation prompt; each completion is the answer, its
    end-of-turn marker (EOS here); prompt + completion is SFT's rendering of the same conversation."""
    from llmkit.data.preference import encode_pair
    from llmkit.data.sft import encode_conversation

    prompt = [{"role": "user", "content": "say a good word"}]
    chosen, rejected = [{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": BAD}]
    p, c, r = encode_pair(chat_tokenizer, prompt, chosen, rejected, None)
    assert chat_tokenizer.decode(p).endswith("<|im_start|>assistant\n")
    assert chat_tokenizer.decode(c) == GOOD + "<|im_end|>" and chat_tokenizer.decode(r) == BAD + "<|im_end|>"
    sft = encode_conversation(chat_tokenizer, prompt + chosen, 1000)
    assert p + c == sft["input_ids"]
    assert [t for t in sft["labels"] if t != -100] == c  # the completion is exactly what SFT learns


def test_conversational_and_dialogue_rows_share_the_prompt(chat_tokenizer):
    from llmkit.data.preference import encode_pair, to_pair

    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "say a good word"}]
    whole = {"chosen": turns + [{"role": "assistant", "content": GOOD}],
             "rejected": turns + [{"role": "assistant", "content": BAD}]}
    prompt, chosen, rejected = to_pair(whole, "conversational", 0)
    assert prompt == turns and chosen[0]["content"] == GOOD and rejected[0]["content"] == BAD
    explicit = to_pair({"prompt": turns, "chosen": whole["chosen"][-1:], "rejected": whole["rejected"][-1:]},
                       "conversational", 0)
    assert explicit == (prompt, chosen, rejected)
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: say a good word\n\nAssistant: " + GOOD,
          "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: say a good word\n\nAssistant: " + BAD}
    assert to_pair(hh, "dialogue", 0) == (prompt, chosen, rejected)
    p, c, _ = encode_pair(chat_tokenizer, prompt, chosen, rejected, None)
    assert "hello" in chat_tokenizer.decode(p) and chat_tokenizer.decode(c) == GOOD + "<|im_end|>"


def test_truncation_takes_the_prompt_first():
    from llmkit.data.preference import truncate_pair

    assert truncate_pair([1] * 10, [2] * 3, [3] * 5, 20) == ([1] * 10, [2] * 3, [3] * 5, False)
    p, c, r, cut = truncate_pair(list(range(10)), [2] * 3, [3] * 5, 12)
    assert cut and p == list(range(3, 10)) and c == [2] * 3 and r == [3] * 5  # the prompt's start went
    p, c, r, cut = truncate_pair(list(range(10)), [2] * 30, [3] * 5, 12)
    assert p == list(range(4, 10)) and c == [2] * 6 and r == [3] * 5  # half kept for the prompt, answers cut


def test_losses_match_their_formulas():
    import math

    import torch

    from llmkit.training.preference import preference_loss

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    logps, ref = (torch.tensor([-2.0]), torch.tensor([-5.0])), (torch.tensor([-4.0]), torch.tensor([-4.0]))
    lengths = (torch.tensor([4]), torch.tensor([2]))  # log-ratios: chosen 2, rejected -1
    dpo = preference_loss("dpo", 0.1, 0.0, 0.0, logps, ref, lengths)
    assert float(dpo) == pytest.approx(-math.log(sigmoid(0.3)))
    cdpo = preference_loss("dpo", 0.1, 0.2, 0.0, logps, ref, lengths)
    assert float(cdpo) == pytest.approx(0.8 * float(dpo) - 0.2 * math.log(sigmoid(-0.3)))
    ipo = preference_loss("ipo", 0.1, 0.0, 0.0, logps, ref, lengths)
    assert float(ipo) == pytest.approx((2.0 / 4 + 1.0 / 2 - 5.0) ** 2)
    zero = (torch.zeros(1), torch.zeros(1))
    simpo = preference_loss("simpo", 2.0, 0.0, 1.0, logps, zero, lengths)  # mean log-probs -0.5 and -2.5
    assert float(simpo) == pytest.approx(-math.log(sigmoid(2.0 * 2.0 - 1.0)))
    orpo = preference_loss("orpo", 0.1, 0.0, 0.0, logps, zero, lengths)
    log_odds = (-0.5 - -2.5) - (math.log(1 - math.exp(-0.5)) - math.log(1 - math.exp(-2.5)))
    assert float(orpo) == pytest.approx(0.5 - 0.1 * math.log(sigmoid(log_odds)), rel=1e-5)


def test_without_trl_the_run_is_refused_with_the_install_line(tmp_path, pref_config, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    result = invoke("finetune", write_yaml(tmp_path / "pref.yaml", pref_config), "--dry-run")
    assert result.exit_code == 2, result.output
    assert "task.type: preference tuning needs the trl package" in result.output
    assert "pip install 'llmkit[preference]'" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("with_adapter", [False, True])
def test_reward_model_learns_pairwise_accuracy(tmp_path, pref_config, chat_tokenizer, with_adapter):
    """A one-output sequence-classification head trained with the Bradley-Terry loss ranks every validation
    pair right; with LoRA the new score head trains beside the adapter and is saved with it."""
    pref_config["task"] = {"type": "reward-model"}
    del pref_config["preference"]
    rows = [{"prompt": f"say word {i}", "chosen": GOOD, "rejected": BAD} for i in range(40)]  # the good answer wins
    pref_config["data"].update(train_file=write_jsonl(tmp_path / "data/train.jsonl", rows[:32]),
                               validation_file=write_jsonl(tmp_path / "data/dev.jsonl", rows[32:]))
    pref_config["train"].update(learning_rate=1e-2 if with_adapter else 3e-3)
    command = "finetune"
    if with_adapter:
        use_lora_on_a_saved_base(tmp_path, pref_config, chat_tokenizer)
        command = "adapter"
    result = invoke(command, write_yaml(tmp_path / "rm.yaml", pref_config))
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_accuracy"] == 1.0 and metrics["eval_margin"] > 0, metrics
    assert "Reward model (validation" in (run / "report.md").read_text()
    scored = invoke("eval", run, "--data", pref_config["data"]["validation_file"], "-o", tmp_path / "eval")
    assert scored.exit_code == 0, scored.output  # eval.task auto: preference, for a reward model
    figures = json.loads((tmp_path / "eval/eval.json").read_text())["metrics"]
    assert figures["eval_accuracy"] == 1.0 and figures["eval_margin"] == pytest.approx(metrics["eval_margin"],
                                                                                       rel=1e-4)
    if with_adapter:
        meta = json.loads((run / "adapter/llmkit_adapter.json").read_text())
        assert meta["task"] == "reward-model"
        refused = invoke("eval", run, "--data", pref_config["data"]["validation_file"], "eval.task=perplexity")
        assert refused.exit_code == 2 and "is a reward model, evaluated on preference pairs" in refused.output
    else:
        config = json.loads((run / "model/config.json").read_text())
        assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1


@pytest.mark.parametrize("with_adapter", [False, True])
def test_preference_tuning_resumes_mid_epoch_exactly(monkeypatch, tmp_path, pref_config, chat_tokenizer,
                                                     with_adapter):
    """SIGINT at step 3 of 6, then train.resume=auto: the same losses and weights as an uninterrupted run (the
    reference is rebuilt from the untrained model: the frozen copy, or the base under the adapter)."""
    from tests.training.test_resume import assert_same_weights, run_interrupted_and_resumed, weights

    pref_config["train"].update(max_steps=6, per_device_train_batch_size=4, eval_strategy="no", logging_steps=1)
    pref_config["data"].pop("validation_file")
    command, saved = "finetune", "model/model.safetensors"
    if with_adapter:
        use_lora_on_a_saved_base(tmp_path, pref_config, chat_tokenizer)
        command, saved = "adapter", "adapter/adapter_model.safetensors"
    full, parts = run_interrupted_and_resumed(monkeypatch, tmp_path, command, pref_config, steps=6, half=3)
    assert_same_weights(weights(full / saved), weights(parts / saved))


def test_completion_logps_are_the_masked_sum_of_token_log_probs():
    import torch

    from llmkit.training.preference import completion_logps

    torch.manual_seed(0)
    logits, ids = torch.randn(4, 7, 11), torch.randint(0, 11, (4, 7))
    mask = torch.zeros(4, 7, dtype=torch.long)
    mask[:, 3:6] = 1
    mask[2] = 0  # a row without completion tokens sums to 0
    full = torch.gather(logits[:, :-1].log_softmax(-1), 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(completion_logps(logits, ids, mask), (full * mask[:, 1:]).sum(-1), atol=1e-6)


def test_smoke_mode_runs_a_preference_config_on_a_tiny_model(tmp_path, pref_config, monkeypatch):
    """--smoke: the model shrunk (same family), 3 steps, into smoke/ (the configured output_dir left alone); the
    figures are still reported."""
    monkeypatch.chdir(tmp_path)
    pref_config["model"]["from_config"].update(num_layers=4, hidden_size=64, intermediate_size=128)
    result = invoke("finetune", write_yaml(tmp_path / "pref.yaml", pref_config), "--smoke")
    assert result.exit_code == 0, result.output
    assert "smoke: model.from_config llama shrunk to 2 layers" in result.output
    run = tmp_path / "smoke" / "finetune-pref"
    assert not (tmp_path / "run").exists()
    assert [h["step"] for h in history(run) if "loss" in h] == [1, 2, 3]
    assert "eval_rewards/accuracies" in json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("with_adapter", [False, True])
def test_precomputed_reference_trains_like_the_live_one(tmp_path, pref_config, chat_tokenizer, with_adapter):
    """preference.precompute_ref: the reference's log-probs computed once before training (no frozen copy kept)
    give the same training and evaluation figures as the reference run at every step."""
    pref_config["train"].update(num_train_epochs=1)
    command = "finetune"
    if with_adapter:
        use_lora_on_a_saved_base(tmp_path, pref_config, chat_tokenizer)
        command = "adapter"
    pref_config["data"]["cache_dir"] = str(tmp_path / "cache")
    figures, outputs = [], []
    for run, precompute in enumerate((False, True, True)):  # the second precomputed run reads the disk cache
        pref_config["preference"]["precompute_ref"] = precompute
        pref_config["output_dir"] = str(tmp_path / f"run-{run}")
        result = invoke(command, write_yaml(tmp_path / "pref.yaml", pref_config))
        assert result.exit_code == 0, result.output
        assert ("precomputed once before training" in result.output) == precompute
        figures.append(json.loads((tmp_path / f"run-{run}" / "metrics.json").read_text()))
        outputs.append(result.output)
    assert "reference log-probs (train, 32 pairs): computed" in outputs[1] and "reused" not in outputs[1]
    assert "reference log-probs (train, 32 pairs): reused from the cache" in outputs[2]
    assert "reference log-probs (validation, 8 pairs): reused from the cache" in outputs[2]
    for key in ("train_loss", "eval_loss", "eval_rewards/margins", "eval_rewards/chosen", "eval_logps/rejected"):
        assert figures[1][key] == pytest.approx(figures[0][key], rel=1e-4, abs=1e-5), key
        assert figures[2][key] == figures[1][key], key


@pytest.mark.xdist_group("multi-process")  # with tests/training/test_distributed.py: one launch at a time
def test_two_processes_train_like_one(tmp_path, pref_config):
    """torchrun with 2 CPU processes of 4 pairs = one process of 8 pairs: the same losses and weights (each
    process keeps its own frozen reference copy)."""
    from tests.training.test_distributed import compare, run_both

    pref_config["train"].update(max_steps=3, logging_steps=1, eval_strategy="no", learning_rate=1e-3)
    pref_config["data"].pop("validation_file")
    pref_config.pop("output_dir")
    one, two = run_both(tmp_path, "finetune", pref_config, batch=4)
    compare(one, two)


def test_summary_figures_of_pairs():
    """rewards/accuracies compares the rewards, logps/accuracies the mean per-token log-probs (no reference)."""
    import numpy as np

    from llmkit.training.preference import summarise

    rows = np.array([[0.2, 0.1, -10.0, -4.0, -1.0, -2.0],   # reward right, mean log-prob right
                     [0.0, 0.3, -6.0, -9.0, -3.0, -1.5],    # both wrong
                     [0.5, -0.5, -8.0, -8.0, -2.0, -4.0]])  # both right
    figures = summarise(rows)
    assert figures["rewards/accuracies"] == pytest.approx(2 / 3) and figures["logps/accuracies"] == pytest.approx(2 / 3)
    assert figures["rewards/margins"] == pytest.approx((0.1 - 0.3 + 1.0) / 3)
    assert figures["logps/chosen"] == pytest.approx(-8.0) and figures["logps/rejected"] == pytest.approx(-7.0)


# ---------------------------------------------------------------- KTO, the reference cache


def kto_rows(n: int) -> list[dict]:
    """Each pair of pair_rows as two unpaired rows: its chosen answer desirable, its rejected one not."""
    rows = []
    for pair in pair_rows(n):
        rows += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                 {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
    return rows


def test_kto_learns_from_unpaired_rows(tmp_path, pref_config):
    pref_config["preference"] = {"method": "kto", "beta": 0.5, "undesirable_weight": 1.2}
    pref_config["data"].update(train_file=write_jsonl(tmp_path / "data/kto.jsonl", kto_rows(32)),
                               validation_file=write_jsonl(tmp_path / "data/kto-dev.jsonl", kto_rows(8)))
    pref_config["train"].update(num_train_epochs=2)
    result = invoke("finetune", write_yaml(tmp_path / "kto.yaml", pref_config))
    assert result.exit_code == 0, result.output
    assert "unpaired rows (40 desirable, 40 undesirable)" in result.output and "undesirable_weight 1.2" in result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_rewards/margins"] > 0.5 and "eval_kl" in metrics, metrics
    train_logs = [h for h in history(run) if "loss" in h]
    assert "kl" in train_logs[-1] and train_logs[-1]["loss"] < train_logs[0]["loss"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["reference"] == GOOD and samples[1]["reference"] is None  # an undesirable completion


@pytest.mark.xdist_group("multi-process")  # with tests/training/test_distributed.py: one launch at a time
def test_kto_two_processes_share_one_kl_estimate(tmp_path, pref_config):
    """KTO's KL estimate is the mean over the whole global batch, gathered across processes as trl does. With the
    same completion on every row, a row's mismatched KL completion does not depend on how the batch is split, so
    torchrun with 2 processes of 4 rows trains like one process of 8: the same KL, losses and weights. An estimate
    per process (4 rows each, different prompts) gives other figures; beta is 5 so that they show (at beta 0.5 a
    per-process estimate moved the losses by less than the tolerance: its first-order effects cancel across the
    two ranks)."""
    from tests.training.test_distributed import compare, run_both

    rows = [{"prompt": "tell me " + "more " * (i % 5) + f"about the number {i}", "completion": GOOD,
             "label": i % 4 != 3} for i in range(32)]
    pref_config["preference"] = {"method": "kto", "beta": 5.0}
    pref_config["data"]["train_file"] = write_jsonl(tmp_path / "data/kto-one-answer.jsonl", rows)
    pref_config["data"].pop("validation_file")
    pref_config["train"].update(max_steps=4, logging_steps=1, eval_strategy="no", learning_rate=3e-2)
    pref_config.pop("output_dir")
    one, two = run_both(tmp_path, "finetune", pref_config, batch=4)
    kl_one, kl_two = ([h["kl"] for h in history(run) if "kl" in h] for run in (one, two))
    assert len(kl_one) == 4 and max(kl_one) > 0.1, kl_one  # not clamped to 0 throughout: it shapes the loss
    assert kl_two == pytest.approx(kl_one, rel=1e-4, abs=1e-5)  # what rank 0 used: the whole batch's estimate
    compare(one, two)


def test_kto_loss_matches_trl_formula():
    """trl's KTOTrainer (loss_type kto): 1 - s(b (r - z)) x desirable_weight, 1 - s(b (z - r)) x undesirable."""
    import math

    import torch

    from llmkit.training.preference import UnpairedCollator, kto_loss

    loss = kto_loss(0.1, (1.0, 2.0), torch.tensor([3.0, -2.0]), torch.tensor(0.5), torch.tensor([True, False]))
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert loss.tolist() == pytest.approx([1 - sigmoid(0.1 * 2.5), 2 * (1 - sigmoid(0.1 * 2.5))])
    batch = UnpairedCollator(0, None)([{"prompt_ids": [1], "completion_ids": [2], "label": True},
                                       {"prompt_ids": [3], "completion_ids": [4, 5], "label": False}])
    assert batch["KL_input_ids"].tolist() == [[1, 4, 5], [3, 2, 0]]  # each prompt with another row's completion


def test_reference_cache_key_follows_the_model_and_the_data(tmp_path):
    """The disk cache of precompute_ref is keyed by the reference's weights and the split's token ids: the same
    model and data find the same file; another weight, another token or another setting, another file."""
    from types import SimpleNamespace

    import datasets
    import torch

    from llmkit.training.preference import RefCache

    def key(model, ds, settings=None):
        trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m),
                                  data_collator=SimpleNamespace(pad_to_multiple_of=None))
        return RefCache(cache_dir=str(tmp_path), settings=settings).path(trainer, ds)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ds = datasets.Dataset.from_dict({"prompt_ids": [[1, 2]], "chosen_ids": [[3]], "rejected_ids": [[4]]})
    first = key(model, ds)
    assert first == key(model, ds) and first.parent == tmp_path / "reference"
    assert key(model, ds.map(lambda r: {"chosen_ids": [5]})) != first
    assert key(model, ds, {"bf16": True}) != first
    with torch.no_grad():
        model.weight[0, 0] += 1e-3
    assert key(model, ds) != first
