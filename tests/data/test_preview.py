"""--dry-run shows each split's first example as the model will see it (data/preview.py): the decoded input ids,
the trained tokens in [[ ]], the label; and the memory estimate line (training/memory.py)."""

from __future__ import annotations

import re

import pytest

from llmkit.data.preview import render
from tests.conftest import write_yaml
from tests.recipes.helpers import invoke
from tests.recipes.test_preference import pref_config  # noqa: F401 (fixture)
from tests.recipes.test_pretrain_recipe import corpus, gpt_config  # noqa: F401 (fixture)
from tests.recipes.test_sft_recipe import sft_config  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def chat_tokenizer(chat_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_tokenizer_dir)


def dry_run(tmp_path, config: dict, command: str = "finetune") -> str:
    result = invoke(command, write_yaml(tmp_path / "c.yaml", config), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "memory: ~" in result.output and "estimated peak = weights" in result.output
    return result.output


def example(output: str, split: str = "train") -> tuple[str, str]:
    """(the header line, the rendered text) of a split's example in a dry run's output."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"example {split}[0]: "))
    body = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        body.append(line[4:] if line.startswith("  | ") else line.strip())
    return lines[start], "\n".join(body)


def test_render_marks_trained_runs_and_cuts_the_middle(chat_tokenizer):
    ids = lambda text: chat_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, answer = ids("hello world what is"), ids(" the answer<|im_end|>")
    assert render(chat_tokenizer, prompt + answer, [False] * len(prompt) + [True] * len(answer)) == \
        "hello world what is[[ the answer<|im_end|>]]"
    word = chat_tokenizer.decode(prompt[:1])  # 30 times one token: 4 kept at each end, 22 cut (6 of them trained)
    cut = render(chat_tokenizer, prompt[:1] * 30, [False] * 20 + [True] * 10, limit=8)
    assert cut == word * 4 + " … 22 tokens (6 trained) … " + "[[" + word * 4 + "]]"


def test_classification_dry_run_shows_label_and_warns_past_free_memory(tmp_path, tiny_config, monkeypatch):
    import llmkit.training.memory as memory

    monkeypatch.setattr(memory, "free_memory", lambda device: (2**20, "RAM available"))
    out = dry_run(tmp_path, tiny_config)
    head, text = example(out)
    assert re.fullmatch(r"example train\[0\]: \d+ tokens; label (negative \(id 0\)|positive \(id 1\))", head)
    assert text.startswith("[CLS] ") and text.endswith(" [SEP]")
    assert "example validation[0]: " in out
    warning = next(line for line in out.splitlines() if line.startswith("warning: the memory estimate"))
    assert "1 MiB of RAM available" in warning
    for knob in ("train.per_device_train_batch_size", "data.max_length", "train.gradient_checkpointing", "adapter"):
        assert knob in warning


def test_sft_dry_run_marks_the_answer_not_the_prompt(tmp_path, sft_config):  # noqa: F811
    out = dry_run(tmp_path, sft_config)
    head, text = example(out)
    assert re.fullmatch(r"example train\[0\]: \d+ tokens, \d+ trained \(in \[\[ \]\]\)", head)
    prompt, trained = text.split("[[", 1)
    assert "<|im_start|>user\nsay a good word<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert trained.startswith("great and wonderful<|im_end|>") and trained.count("]]") == 1
    assert "warning: the memory estimate" not in out


def test_preference_dry_run_shows_both_answers_marked(tmp_path, pref_config):  # noqa: F811
    out = dry_run(tmp_path, pref_config)
    head, text = example(out)
    assert re.fullmatch(r"example train\[0\]: prompt \d+ tokens, chosen \d+, rejected \d+ \(trained in \[\[ \]\]\)",
                        head)
    chosen, rejected = text.split("rejected:")
    assert "say a good word" in chosen and "[[great and wonderful" in chosen
    assert "[[awful and terrible" in rejected and "say a good" not in chosen.split("[[")[1]
    assert "frozen models" in out  # DPO of the whole model keeps a reference copy


def test_pretrain_dry_run_shows_a_block(tmp_path, corpus):  # noqa: F811
    out = dry_run(tmp_path, gpt_config(tmp_path, corpus), "pretrain")
    head, text = example(out)
    assert head == "example train[0]: 32 tokens, all trained" and "[[" not in text
    assert "the" in text and "(8 x 32 tokens)" in out


def test_trained_spans_are_green_on_a_colour_terminal_only(monkeypatch):
    from llmkit.data.preview import GREEN, RESET, coloured, takes_colour

    lines = ["  | <|im_start|>assistant", "  | [[Blue", "  | and green.<|im_end|>]] then [[x]]"]
    assert coloured(lines) == ["  | <|im_start|>assistant", f"  | [[{GREEN}Blue{RESET}",
                               f"{GREEN}  | and green.<|im_end|>{RESET}]] then [[{GREEN}x{RESET}]]"]

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert takes_colour(Terminal()) and not takes_colour(object())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not takes_colour(Terminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not takes_colour(Terminal())
