"""SFT data: layouts, chat rendering with loss only on assistant turns, EOS, truncation, preparation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llmkit.config.sections import DataConfig
from llmkit.data.sft import (
    IGNORE_INDEX,
    PLAIN_TEMPLATE,
    choose_template,
    detect_conversation_format,
    encode_conversation,
    encode_row,
    encode_text,
    prepare_sft_data,
    to_messages,
    use_plain_template,
)
from llmkit.errors import UserError
from tests.conftest import CHATML, NEUTRAL, build_chat_tokenizer


@pytest.fixture(scope="module")
def chat_tok():
    return build_chat_tokenizer(CHATML)


@pytest.fixture(scope="module")
def plain_tok():
    return build_chat_tokenizer(None)


def labelled(enc: dict) -> list[int]:
    return [t for t in enc["labels"] if t != IGNORE_INDEX]


def expected_chatml(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """input_ids/labels built independently: ChatML segments tokenized one by one (no merges cross them)."""
    ids, labels = [], []
    for m in messages:
        head = tok.encode(f"<|im_start|>{m['role']}\n", add_special_tokens=False)
        body = tok.encode(m["content"] + "<|im_end|>", add_special_tokens=False)
        ids += head + body
        labels += [IGNORE_INDEX] * len(head) + (body if m["role"] == "assistant" else [IGNORE_INDEX] * len(body))
        nl = tok.encode("\n", add_special_tokens=False)
        if m is not messages[-1]:
            ids += nl
            labels += [IGNORE_INDEX] * len(nl)
    return ids, labels


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("columns, fmt", [
    (["messages"], "messages"), (["messages", "text"], "messages"), (["instruction", "input", "output"], "alpaca"),
    (["instruction", "output"], "alpaca"), (["prompt", "response"], "prompt_response"), (["text", "id"], "text"),
])
def test_detect_format(columns, fmt):
    assert detect_conversation_format(columns) == fmt


def test_detect_format_error_lists_columns_and_layouts():
    with pytest.raises(UserError) as e:
        detect_conversation_format(["question", "answer"])
    msg = str(e.value)
    assert "question, answer" in msg
    for layout in ("messages", "alpaca", "prompt_response", "text"):
        assert layout in msg


def test_alpaca_with_and_without_input():
    with_input = to_messages({"instruction": "Sum", "input": "1 2", "output": "3"}, "alpaca")
    assert with_input == [{"role": "user", "content": "Sum\n\n1 2"}, {"role": "assistant", "content": "3"}]
    for empty in ("", None):
        assert to_messages({"instruction": "Hi", "input": empty, "output": "Hello"}, "alpaca")[0]["content"] == "Hi"
    assert to_messages({"instruction": "Hi", "output": "Hello"}, "alpaca")[0]["content"] == "Hi"


def test_prompt_response_messages():
    assert to_messages({"prompt": "Q", "response": "A"}, "prompt_response") == [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


@pytest.mark.parametrize("turns, needle", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "user"}, {"role": "assistant", "content": "x"}], "'role' and a 'content'"),
    ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}], "role 'robot'"),
    ([], "no turns"),
])
def test_messages_validation_names_the_row(turns, needle):
    with pytest.raises(UserError) as e:
        to_messages({"messages": turns}, "messages", index=7)
    assert "row 7" in str(e.value) and needle in str(e.value)


def test_messages_drop_none_keys():
    turns = [{"role": "user", "content": "hi", "name": None}, {"role": "assistant", "content": "yo", "name": None}]
    assert to_messages({"messages": turns}, "messages") == [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "yo"}]


# ---------------------------------------------------------------- chat encoding


def test_only_assistant_tokens_carry_loss(chat_tok):
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "what is the film"},
            {"role": "assistant", "content": "a great story"}]
    enc = encode_conversation(chat_tok, msgs, max_length=256)
    ids, labels = expected_chatml(chat_tok, msgs)
    assert enc["input_ids"] == ids and enc["labels"] == labels and not enc["truncated"]
    assert chat_tok.decode(labelled(enc)) == "a great story<|im_end|>"
    prompt = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab == IGNORE_INDEX]
    assert chat_tok.decode(prompt) == "<|im_start|>system\nbe kind<|im_end|>\n<|im_start|>user\nwhat is the film" \
                                      "<|im_end|>\n<|im_start|>assistant\n"
    # labelled tokens are the input tokens themselves
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(enc["input_ids"], enc["labels"]))


def test_eos_at_end_and_labelled(chat_tok):
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    enc = encode_conversation(chat_tok, msgs, max_length=256)
    assert enc["input_ids"][-1] == chat_tok.eos_token_id
    assert enc["labels"][-1] == chat_tok.eos_token_id
    assert enc["input_ids"].count(chat_tok.eos_token_id) == 2  # user turn's end marker + the final one, no extra


def test_multi_turn_both_assistant_turns_labelled(chat_tok):
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the film was great"},
            {"role": "user", "content": "and the music"}, {"role": "assistant", "content": "quite dull"}]
    enc = encode_conversation(chat_tok, msgs, max_length=256)
    ids, labels = expected_chatml(chat_tok, msgs)
    assert enc["input_ids"] == ids and enc["labels"] == labels
    assert chat_tok.decode(labelled(enc)) == "the film was great<|im_end|>quite dull<|im_end|>"
    assert "and the music" not in chat_tok.decode(labelled(enc))


def test_trailing_user_turn_left_out(chat_tok):
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"},
            {"role": "user", "content": "bye"}]
    enc = encode_conversation(chat_tok, msgs, max_length=256)
    assert enc == encode_conversation(chat_tok, msgs[:2], max_length=256)


def test_appends_eos_when_template_does_not_end_with_it(chat_tok):
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}" \
               "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "great film"}]
    enc = encode_conversation(chat_tok, msgs, max_length=256, chat_template=template)
    assert enc["input_ids"][-1] == enc["labels"][-1] == chat_tok.eos_token_id
    # " great" merges the prompt's space with the answer's first word: learned whole, nothing else is
    assert chat_tok.decode(labelled(enc)) == " great film<|im_end|>"
    assert chat_tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab == IGNORE_INDEX]) \
        == "user: hello\nassistant:"


def test_truncation_keeps_the_start(chat_tok):
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": " ".join(NEUTRAL * 3)}]
    full = encode_conversation(chat_tok, msgs, max_length=1000)
    cut = encode_conversation(chat_tok, msgs, max_length=20)
    assert not full["truncated"] and cut["truncated"]
    assert len(cut["input_ids"]) == len(cut["labels"]) == 20
    assert cut["input_ids"] == full["input_ids"][:20] and cut["labels"] == full["labels"][:20]
    exact = encode_conversation(chat_tok, msgs, max_length=len(full["input_ids"]))
    assert not exact["truncated"] and exact == full


# ---------------------------------------------------------------- templates


def test_plain_template_for_instruction_data_without_chat_template(plain_tok, chat_tok):
    assert use_plain_template(plain_tok, "alpaca") and use_plain_template(plain_tok, "prompt_response")
    assert not use_plain_template(chat_tok, "alpaca") and not use_plain_template(plain_tok, "messages")
    assert choose_template(plain_tok, "alpaca") == PLAIN_TEMPLATE
    assert choose_template(chat_tok, "alpaca") is None
    row = {"instruction": "what is the film", "input": "the plot", "output": "a great story"}
    enc = encode_row(plain_tok, row, "alpaca", 256, choose_template(plain_tok, "alpaca"))
    text = plain_tok.decode(enc["input_ids"])
    assert text == "### Instruction:\nwhat is the film\n\nthe plot\n\n### Response:\na great story<|im_end|>"
    assert plain_tok.decode(labelled(enc)) == "a great story<|im_end|>"
    assert enc["input_ids"].count(plain_tok.eos_token_id) == 1


def test_prompt_response_with_chat_template(chat_tok):
    enc = encode_row(chat_tok, {"prompt": "hello", "response": "world"}, "prompt_response", 256)
    assert chat_tok.decode(labelled(enc)) == "world<|im_end|>"
    ids, labels = expected_chatml(chat_tok, to_messages({"prompt": "hello", "response": "world"}, "prompt_response"))
    assert enc["input_ids"] == ids and enc["labels"] == labels


def test_messages_without_chat_template_is_a_user_error(plain_tok):
    with pytest.raises(UserError, match="tokenizer.chat_template"):
        choose_template(plain_tok, "messages")
    assert choose_template(plain_tok, "messages", CHATML) == CHATML


def test_text_format_labels_everything(chat_tok):
    enc = encode_text(chat_tok, "the film was great", 256)
    assert enc["labels"] == enc["input_ids"]
    assert enc["input_ids"][-1] == chat_tok.eos_token_id and not enc["truncated"]
    cut = encode_text(chat_tok, "the film was great and the music was superb", 3)
    assert cut["truncated"] and len(cut["input_ids"]) == 3 and cut["labels"] == cut["input_ids"]


# ---------------------------------------------------------------- preparation


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"what is the film {i}"},
                          {"role": "assistant", "content": "great" if i % 2 else "dull and boring"}]}
            for i in range(n)]


def test_prepare_messages(tmp_path, chat_tok):
    cfg = DataConfig(train_file=write_jsonl(tmp_path / "train.jsonl", chat_rows(8)),
                     validation_file=write_jsonl(tmp_path / "dev.jsonl", chat_rows(4)), max_length=64, cache=False)
    data = prepare_sft_data(cfg, chat_tok, seed=0)
    assert data.label_names == [] and not data.from_cache
    assert sorted(data.splits) == ["train", "validation"]
    assert data.splits["train"].column_names == ["input_ids", "labels"]
    st = data.stats["train"]
    assert st["examples"] == 8 and st["truncated"] == 0 and st["dropped"] == 0 and st["format"] == "messages"
    assert st["tokens"] == sum(len(x) for x in data.splits["train"]["input_ids"])
    first = data.splits["train"][0]
    expected = encode_conversation(chat_tok, chat_rows(1)[0]["messages"], 64)
    assert first["input_ids"] == expected["input_ids"] and first["labels"] == expected["labels"]


def test_prepare_drops_rows_truncated_to_no_answer(tmp_path, chat_tok):
    rows = chat_rows(4) + [{"messages": [{"role": "user", "content": " ".join(NEUTRAL * 4)},
                                         {"role": "assistant", "content": "great"}]}]
    cfg = DataConfig(train_file=write_jsonl(tmp_path / "train.jsonl", rows), max_length=32, cache=False)
    data = prepare_sft_data(cfg, chat_tok, seed=0)
    st = data.stats["train"]
    assert st["dropped"] == 1 and st["examples"] == 4 and st["truncated"] >= 1
    assert st["max_tokens"] <= 32
    assert all(any(x != IGNORE_INDEX for x in lab) for lab in data.splits["train"]["labels"])


def test_prepare_alpaca_plain_template_and_cache(tmp_path, plain_tok):
    rows = [{"instruction": "what is the film", "input": "" if i % 2 else "the plot", "output": "great"}
            for i in range(6)]
    cfg = DataConfig(train_file=write_jsonl(tmp_path / "train.jsonl", rows), max_length=64)
    data = prepare_sft_data(cfg, plain_tok, seed=0)
    assert data.stats["train"]["format"] == "alpaca" and not data.from_cache
    assert plain_tok.decode(data.splits["train"][0]["input_ids"]).startswith("### Instruction:\n")
    again = prepare_sft_data(cfg, plain_tok, seed=0)
    assert again.from_cache and again.stats == data.stats
    assert again.splits["train"]["labels"] == data.splits["train"]["labels"]


def test_prepare_messages_without_template_fails(tmp_path, plain_tok):
    cfg = DataConfig(train_file=write_jsonl(tmp_path / "train.jsonl", chat_rows(2)), max_length=64, cache=False)
    with pytest.raises(UserError, match="tokenizer.chat_template"):
        prepare_sft_data(cfg, plain_tok, seed=0)
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    data = prepare_sft_data(cfg, plain_tok, seed=0, chat_template=str(template))
    assert data.stats["train"]["examples"] == 2


def test_prepare_text_and_bad_layout(tmp_path, chat_tok):
    cfg = DataConfig(train_file=write_jsonl(tmp_path / "train.jsonl", [{"text": "the film"}, {"text": "dull"}]),
                     max_length=64, cache=False)
    data = prepare_sft_data(cfg, chat_tok, seed=0)
    assert data.stats["train"]["format"] == "text"
    assert data.splits["train"]["labels"] == data.splits["train"]["input_ids"]
    bad = DataConfig(train_file=write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}]),
                     max_length=64, cache=False)
    with pytest.raises(UserError, match="question, answer"):
        prepare_sft_data(bad, chat_tok, seed=0)


def test_tokenizer_not_mutated(chat_tok):
    before = copy.deepcopy(chat_tok.chat_template)
    encode_conversation(chat_tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 32,
                        chat_template=PLAIN_TEMPLATE)
    assert chat_tok.chat_template == before


def test_template_rendering_earlier_turns_differently(chat_tok):
    """A template that marks only the last assistant turn (like reasoning templates): spans found by content."""
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
                "{% if m['role'] == 'assistant' and loop.last %}{{ 'the ' }}{% endif %}"
                "{{ m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    msgs = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "great"},
            {"role": "user", "content": "and"}, {"role": "assistant", "content": "dull"}]
    enc = encode_conversation(chat_tok, msgs, max_length=256, chat_template=template)
    assert chat_tok.decode(labelled(enc)) == "great<|im_end|>the dull<|im_end|>"
