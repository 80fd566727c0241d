"""Malformed data through the real CLI: a clear message naming the key, the file, the rows and the fix (exit 2, no
traceback), or a note on stdout for what llmkit repairs (spaces around labels) or keeps (empty texts)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llmkit.errors import UserError
from tests.conftest import sentiment_rows, write_yaml
from tests.recipes.helpers import invoke, tiny_bert_config

ROWS = sentiment_rows(8, seed=1)


def csv_lines(rows: list[dict], header: str | None = "text,label") -> str:
    return (header + "\n" if header else "") + "".join(f"{r['text']},{r['label']}\n" for r in rows)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def config(tiny_config, tmp_path) -> dict:
    """The tiny finetune config with a one-layer model, run with --dry-run (data and model are checked, nothing is
    trained or written)."""
    cfg = copy.deepcopy(tiny_config)
    cfg["model"]["from_config"]["num_layers"] = 1
    cfg["data"].pop("validation_file")
    return cfg


def run(tmp_path: Path, config: dict, command: str = "finetune", *args: str, name: str = "train.csv",
        content: str | bytes | None = None, **data):
    """Write `content` as the training file (when given), set `data`, run `command --dry-run`."""
    if content is not None:
        path = tmp_path / "bad" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        config["data"]["train_file"] = str(path)
    config["data"].update(data)
    return invoke(command, write_yaml(tmp_path / f"{command}.yaml", config), *(args or ("--dry-run",)))


def refused(result, *needles: str) -> str:
    out = result.output
    assert result.exit_code == 2, f"exit code {result.exit_code} ({result.exception!r}):\n{out}"
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    return out


def accepted(result, *needles: str) -> str:
    out = result.output
    assert result.exit_code == 0, f"exit code {result.exit_code} ({result.exception!r}):\n{out}"
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    return out


# ---------------------------------------------------------------- 1. spaces around labels


def test_spaces_around_labels_are_stripped_with_a_note_per_split(tmp_path, config):
    labels = [" positive", "positive ", "negative", " negative ", "positive", "negative", "positive", "negative"]
    train = csv_lines([dict(r, label=f'"{lab}"') for r, lab in zip(ROWS, labels)])
    (tmp_path / "dev.csv").write_text(csv_lines([dict(ROWS[0], label="negative "), ROWS[1]]))
    out = accepted(run(tmp_path, config, content=train, validation_file=str(tmp_path / "dev.csv")),
                   "data: stripped spaces around 3 label values (train)",
                   "data: stripped spaces around 1 label value (validation)", "2 classes (negative, positive)")
    assert "( negative" not in out


def test_the_note_is_repeated_when_the_data_comes_from_the_cache(tmp_path, config):
    train = csv_lines([dict(r, label=" " + r["label"]) for r in ROWS])
    first = accepted(run(tmp_path, config, content=train), "stripped spaces around 8 label values (train)")
    assert "prepared in" in first
    accepted(run(tmp_path, config), "stripped spaces around 8 label values (train)", "from cache")


def test_multi_label_values_are_stripped(tmp_path, tiny_config, tokenizer_dir):
    from transformers import AutoTokenizer

    from tests.data.test_loading import data_cfg, prepare

    path = tmp_path / "t.jsonl"
    path.write_text(jsonl([{"text": r["text"], "label": lab} for r, lab in
                           zip(ROWS, [[" art", "news "], ["news"], ["art"], [" sport"]])]))
    data = prepare(data_cfg(tiny_config, train_file=str(path)), AutoTokenizer.from_pretrained(tokenizer_dir),
                   multi_label=True)
    assert data.label_names == ["art", "news", "sport"]
    assert data.splits["train"]["labels"][0] == [1.0, 1.0, 0.0]


def test_label_names_from_the_config_are_stripped_and_checked(tmp_path, config):
    accepted(run(tmp_path, config, label_names=[" negative", "positive "]), "2 classes (negative, positive)")
    refused(run(tmp_path, config, label_names=["neg", "pos", "neg"]),
            "data.label_names: 'neg' is listed twice in ['neg', 'pos', 'neg']", "each class once")
    refused(run(tmp_path, config, label_names=["neg", " neg"]), "data.label_names: 'neg' is listed twice")
    refused(run(tmp_path, config, label_names=["neg", "  "]), "data.label_names", "empty name")


# ---------------------------------------------------------------- 2. a header read as data


@pytest.mark.parametrize("header, names", [("text,label", ["text", "label"]), ("Text,Label", ["text", "label"]),
                                           ("review,sentiment", ["review", "sentiment"]),
                                           ("id,text,label", ["n", "text", "label"])])
def test_a_header_row_with_column_names_is_refused(tmp_path, config, header, names):
    rows = ROWS if len(names) == 2 else [{"text": f"{i},{r['text']}", "label": r["label"]} for i, r in enumerate(ROWS)]
    path = tmp_path / "bad" / "train.csv"
    text_column = "review" if "review" in names else "text"
    label_column = "sentiment" if "sentiment" in names else "label"
    out = refused(run(tmp_path, config, content=csv_lines(rows, header=header), column_names=names,
                      text_column=text_column, label_column=label_column),
                  f"data.column_names: the first row of {path} is a header ({header.replace(',', ', ')}); remove "
                  "data.column_names (the header names the columns) or delete that row.")
    assert out.count("error:") == 1


def test_a_header_row_in_a_tsv_file(tmp_path, config):
    content = "text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in ROWS)
    refused(run(tmp_path, config, name="train.tsv", content=content, column_names=["text", "label"]),
            "the first row of", "train.tsv is a header (text, label)")


def test_column_names_without_a_header_still_read_every_row(tmp_path, config):
    rows = [{"text": "the text of this label was great", "label": "positive"}, *ROWS[1:]]
    accepted(run(tmp_path, config, content=csv_lines(rows, header=None), column_names=["text", "label"]),
             "train 8 examples")


# ---------------------------------------------------------------- 3. label_separator on single-label data


def test_label_separator_on_single_label_data_is_refused(tmp_path, config):
    refused(run(tmp_path, config, content=csv_lines(ROWS), label_separator=","),
            "data.label_separator: ',' splits the labels of multi-label classification", "single-label",
            "remove data.label_separator")


def test_label_separator_issues_name_the_reason():
    from llmkit.config.sections import DataConfig

    data = DataConfig(label_separator=",")
    assert data.label_separator_issues("sequence-classification", True) == []
    assert DataConfig().label_separator_issues("sequence-classification", False) == []
    [single] = data.label_separator_issues("sequence-classification", False)
    assert single.key == "data.label_separator"
    assert "task.multi_label is false (single-label" in single.message
    assert "set task.multi_label: true" in single.message
    [prompt] = data.label_separator_issues("sequence-classification", False, command="prompt")
    assert "llmkit prompt does single-label classification" in prompt.message
    [causal] = data.label_separator_issues("causal-lm", False, command="distill")
    assert "task.type is causal-lm" in causal.message


def test_empty_label_separator_is_refused(tmp_path, config):
    config["task"]["multi_label"] = True
    refused(run(tmp_path, config, label_separator=""), "data.label_separator: is empty")


# ---------------------------------------------------------------- 5. one label word for two classes


def test_a_label_word_shared_by_two_classes():
    from llmkit.prompting.template import resolve_verbalizer, shared_label_word

    assert shared_label_word({"negative": ["bad"], "positive": ["good", "great"]}) is None
    assert shared_label_word({"negative": ["bad", "bad"], "positive": "good"}) is None  # twice in one class
    message = shared_label_word({"negative": ["bad"], "positive": ["bad ", "good"]})
    assert message.startswith("the label word 'bad' is given for both 'negative' and 'positive'")
    with pytest.raises(UserError, match="prompt.verbalizer: the label word 'bad' is given for both"):
        resolve_verbalizer({"negative": "bad", "positive": ["good", "bad"]}, ["negative", "positive"])


def test_label_words_that_become_the_same_tokens(tokenizer_dir):
    from transformers import AutoTokenizer

    from llmkit.prompting.template import check_label_words

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # lowercases: 'Great' is 'great'
    words = [["awful"], ["Great"], ["great"]]
    ids = [[tokenizer(w, add_special_tokens=False)["input_ids"] for w in ws] for ws in words]
    with pytest.raises(UserError, match="'great' of class 'c' and 'Great' of class 'b' are the same tokens"):
        check_label_words(tokenizer, words, ids, ["a", "b", "c"], None)


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory, tokenizer_dir) -> str:
    from transformers import AutoTokenizer, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp_path_factory.mktemp("mlm")
    BertForMaskedLM(tiny_bert_config(tokenizer, num_hidden_layers=1)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def prompt_config(tmp_path, sentiment_data, mlm_dir, **prompt) -> dict:
    return {"model": {"name_or_path": mlm_dir},
            "data": {"train_file": str(sentiment_data / "train.csv"),
                     "validation_file": str(sentiment_data / "dev.csv"), "max_length": 32},
            "prompt": {"template": "{text} It was {mask}.",
                       "verbalizer": {"negative": ["terrible"], "positive": ["great"]}, **prompt},
            "output_dir": str(tmp_path / "run")}


def test_prompt_refuses_a_shared_label_word(tmp_path, sentiment_data, mlm_dir):
    shared = {"negative": ["bad"], "positive": ["bad", "good"]}
    cfg = prompt_config(tmp_path, sentiment_data, mlm_dir, verbalizer=shared)
    refused(invoke("prompt", write_yaml(tmp_path / "p.yaml", cfg), "--dry-run"),
            "prompt.verbalizer", "'bad' is given for both 'negative' and 'positive'")
    assert not (tmp_path / "run").exists()


def test_prompt_notes_empty_texts_and_stripped_labels(tmp_path, sentiment_data, mlm_dir):
    dev = tmp_path / "dev.csv"
    dev.write_text(csv_lines([dict(ROWS[0], label=" negative"), dict(ROWS[1], text=""), *ROWS[2:]]))
    cfg = prompt_config(tmp_path, sentiment_data, mlm_dir)
    cfg["data"]["validation_file"] = str(dev)
    accepted(invoke("prompt", write_yaml(tmp_path / "p.yaml", cfg), "--dry-run"),
             "data: 1 row with an empty text in validation (row 2); it is kept",
             "data: stripped spaces around 1 label value (validation)")


# ---------------------------------------------------------------- 6. empty texts


def test_empty_csv_cell_and_json_null_texts_are_kept_and_listed(tmp_path, config):
    rows = [dict(r, text="" if i in (3, 5) else r["text"]) for i, r in enumerate(ROWS)]
    accepted(run(tmp_path, config, content=csv_lines(rows)),
             "data: 2 rows with an empty text in train (rows 4, 6); they are kept", "train 8 examples")
    nulls = [dict(r, text=None if i == 0 else "   " if i == 7 else r["text"]) for i, r in enumerate(ROWS)]
    accepted(run(tmp_path, config, name="train.jsonl", content=jsonl(nulls)),
             "data: 2 rows with an empty text in train (rows 1, 8); they are kept", "train 8 examples")


def test_an_empty_second_text_is_listed(tmp_path, config):
    rows = [{"text": r["text"], "premise": "" if i == 2 else "a film", "label": r["label"]} for i, r in enumerate(ROWS)]
    accepted(run(tmp_path, config, name="train.jsonl", content=jsonl(rows), text_pair_column="premise"),
             "data: 1 row with an empty second text ('premise') in train (row 3); it is kept")


def test_a_split_of_only_empty_texts_is_refused(tmp_path, config):
    path = tmp_path / "bad" / "train.csv"
    refused(run(tmp_path, config, content=csv_lines([dict(r, text="") for r in ROWS])),
            f"data.text_column: 'text' is empty in every row of the train data ({path})", "the columns are: text, "
            "label")


def test_text_cells_that_are_lists_are_refused(tmp_path, config):
    rows = [dict(r, text=[r["text"]]) if i == 4 else r for i, r in enumerate(ROWS)]
    refused(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)),
            "data.text_column: 'text' holds a list in row 5 of the train data", "a text column holds strings")


def test_numbers_in_a_text_column_are_read_as_written(tmp_path, tiny_config):
    from llmkit.data.loading import load_raw_splits
    from tests.data.test_loading import data_cfg

    path = tmp_path / "t.csv"
    path.write_text("text,label\n7,positive\n,negative\nNA,positive\nNone,negative\n12,positive\n")
    raw = load_raw_splits(data_cfg(tiny_config, train_file=str(path)), seed=0)["train"]
    assert raw["text"] == ["7", None, "NA", "None", "12"]  # not 7.0, and "NA" is a text, not a missing value


# ---------------------------------------------------------------- 7. labels that are not classes


def test_a_list_label_in_a_single_label_task(tmp_path, config):
    rows = [dict(r, label=["negative", "positive"]) if i == 2 else r for i, r in enumerate(ROWS)]
    path = tmp_path / "bad" / "train.jsonl"
    refused(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)),
            f"data.label_column: 1 row of the train data ({path}) has a list as the label (row 3; e.g. "
            "['negative', 'positive'])", "set task.multi_label: true")


def test_a_dict_label_is_refused(tmp_path, config):
    rows = [dict(r, label={"name": r["label"]}) for r in ROWS]
    refused(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)),
            "data.label_column: 8 rows of the train data", "have a JSON object as the label (rows 1, 2, 3, 4, 5 "
            "and 3 more", "point data.label_column at the column with the class")
    config["task"]["multi_label"] = True
    rows = [dict(r, label=[{"name": r["label"]}]) for r in ROWS]
    refused(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)), "a JSON object as the label")


def test_a_fractional_label_is_refused_naming_the_row(tmp_path, config):
    rows = [dict(r, label=0.5 if i == 3 else i % 2) for i, r in enumerate(ROWS)]
    refused(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)),
            "data.label_column: 'label' of the train data", "holds fractional numbers (e.g. 0.5), in row 4",
            "integer class ids")


def test_bool_labels_are_the_classes_0_and_1(tmp_path, config):
    rows = [dict(r, label=r["label"] == "positive") for r in ROWS]
    accepted(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)), "2 classes (0, 1)")
    # with names, False and True index them like 0 and 1
    accepted(run(tmp_path, config, label_names=["negative", "positive"]), "2 classes (negative, positive)")


def test_missing_labels_are_refused(tmp_path, config):
    rows = [dict(r, label="" if i in (1, 6) else r["label"]) for i, r in enumerate(ROWS)]
    refused(run(tmp_path, config, content=csv_lines(rows)),
            "data.label_column: 2 rows of the train data", "have no label (rows 2, 7)", "fill in those labels")
    refused(run(tmp_path, config, content=csv_lines([dict(r, label="") for r in ROWS])),
            "data.label_column: 'label' is empty in every row of the train data")


def test_multi_label_empty_cells_mean_no_labels(tmp_path, config):
    config["task"]["multi_label"] = True
    rows = [dict(r, label="" if i == 0 else f'"{r["label"]}, other"') for i, r in enumerate(ROWS)]
    accepted(run(tmp_path, config, content=csv_lines(rows), label_separator=","),
             "3 classes (negative, other, positive)")


# ---------------------------------------------------------------- 8. distill.unlabeled


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer_dir) -> str:
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = tmp_path_factory.mktemp("teacher")
    BertForSequenceClassification(tiny_bert_config(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("name, content, needles", [
    ("extra.txt", b"", ("extra.txt is empty (0 bytes)",)),
    ("extra.txt", b"\n  \n", ("extra.txt is empty (only blank lines)",)),
    ("extra.csv", "text\nun film tr\xe8s r\xe9ussi\n".encode("latin-1"), ("not UTF-8", "line 2")),
    ("extra.json", b"null", ("extra.json line 1 holds a JSON null",)),
    ("extra.csv", b"text,text\na,b\n", ("names the column 'text' twice",)),
])
def test_unlabeled_texts_get_the_data_file_checks(tmp_path, sentiment_data, teacher_dir, name, content, needles):
    path = tmp_path / name
    path.write_bytes(content)
    cfg = {"distill": {"teacher": teacher_dir, "student": {"from_teacher": {"keep_layers": [0]}},
                       "unlabeled": str(path)},
           "data": {"train_file": str(sentiment_data / "train.csv"), "max_length": 32},
           "train": {"max_steps": 1, "precision": "fp32", "save_strategy": "no"}, "output_dir": str(tmp_path / "run")}
    out = refused(invoke("distill", write_yaml(tmp_path / "d.yaml", cfg)), "distill.unlabeled: ", *needles)
    assert "data.unlabeled" not in out
    assert not (tmp_path / "run").exists()


def test_a_dotted_key_names_its_own_option(tmp_path, tiny_config):
    """load_file_split("distill.unlabeled", ...) reports under that option, once per message."""
    from llmkit.data.loading import load_file_split
    from tests.data.test_loading import data_cfg

    reader = data_cfg(tiny_config, train_file=tiny_config["data"]["train_file"])
    for name, content, needle in (("e.txt", b"", "is empty (0 bytes)"), ("n.json", b"null", "holds a JSON null"),
                                  ("d.csv", b"text,text\na,b\n", "names the column 'text' twice")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError) as exc:
            load_file_split("distill.unlabeled", str(tmp_path / name), reader)
        assert str(exc.value).startswith("distill.unlabeled: ") and needle in str(exc.value)
        assert "data." not in str(exc.value)


# ---------------------------------------------------------------- 9. other malformed files


def test_a_tsv_with_quote_characters_is_read_verbatim(tmp_path, config):
    content = "text\tlabel\n" + "".join(f'"{r["text"]}\t{r["label"]}\n' for r in ROWS)
    accepted(run(tmp_path, config, name="train.tsv", content=content), "train 8 examples")


def test_rows_with_one_field_more_than_the_header(tmp_path, config):
    content = "text\tlabel\n" + "".join(f"{r['text']}\tand\t{r['label']}\n" for r in ROWS)
    refused(run(tmp_path, config, name="train.tsv", content=content),
            "data.train_file: the rows of", "have more fields than the header names (text, label)",
            "remove the extra tabs")
    refused(run(tmp_path, config, content="text,label\n" + "".join(f"{r['text']},x,{r['label']}\n" for r in ROWS)),
            "have more fields than the header names", "double quotes")


def test_a_truncated_parquet_file(tmp_path, config):
    import pyarrow as pa
    import pyarrow.parquet as pq

    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}), whole)
    data = whole.read_bytes()
    refused(run(tmp_path, config, name="train.parquet", content=data[:len(data) // 2]),
            "data.train_file: cannot read", "train.parquet as parquet", "corrupted")


@pytest.mark.parametrize("content, needles", [
    ("null", ("train.json line 1 holds a JSON null",)),  # pyarrow crashes the process on this file
    (json.dumps([None, *ROWS]), ("the first item of the array in", "is a JSON null, not an object")),
    ("[1, 2, 3]", ("the first item of the array in", "is a JSON number")),
    (json.dumps({"data": ROWS}, indent=2), ("data.text_column", "Its columns are: data",
                                            "records under 'data'", "jq '.data'")),
    (jsonl(ROWS) + "null\n", ("train.json line 9 holds a JSON null",)),
    ('{\n  "text": "a",', ("is not valid JSON",)),
])
def test_json_files_that_do_not_hold_records(tmp_path, config, content, needles):
    refused(run(tmp_path, config, name="train.json", content=content), *needles)


def test_json_lines_in_a_json_file_are_read(tmp_path, config):
    accepted(run(tmp_path, config, name="train.json", content=jsonl(ROWS)), "train 8 examples")


def test_a_header_naming_a_column_twice(tmp_path, config):
    content = "text,label,label\n" + "".join(f"{r['text']},{r['label']},{r['label']}\n" for r in ROWS)
    refused(run(tmp_path, config, content=content),
            "data.train_file: the header of", "names the column 'label' twice (text, label, label)")
    refused(run(tmp_path, config, column_names=["text", "text"]),
            "data.column_names: 'text' is given twice")


def test_a_header_name_with_spaces(tmp_path, config):
    refused(run(tmp_path, config, content=csv_lines(ROWS, header="text ,label")),
            "data.text_column: 'text' is not a column", "The header has 'text ', with spaces around the name",
            "data.text_column: 'text '")
    accepted(run(tmp_path, config, text_column="text "), "train 8 examples")


def test_column_map_clashes(tmp_path, config):
    content = "text,sentence,label\n" + "".join(f"{r['text']},x,{r['label']}\n" for r in ROWS)
    refused(run(tmp_path, config, content=content, column_map={"sentence": "text"}),
            "data.column_map: renaming 'sentence' to 'text' clashes with the train data's own column 'text'")
    refused(run(tmp_path, config, column_map={"text": "body", "sentence": "body"}),
            "data.column_map: 'text' and 'sentence' are both renamed to 'body'")


def test_validation_split_of_a_tiny_training_file(tmp_path, config):
    refused(run(tmp_path, config, content=csv_lines(ROWS[:1]), validation_split=0.5),
            "data.validation_split: 0.5 of the 1 training rows leaves the training or the validation data empty")


def test_a_long_first_line_with_column_names(tmp_path, config):
    """A first line too long to be a header is data; reading it must not trip the csv module's field limit."""
    long = {"text": "great film " * 120_000, "label": "positive"}
    accepted(run(tmp_path, config, content=csv_lines([long, *ROWS], header=None), column_names=["text", "label"]),
             "train 9 examples")


def test_pretraining_text_columns(tmp_path, tiny_config):
    rows = [{"text": r["text"]} for r in sentiment_rows(40, seed=1)]
    cfg = {"model": {"from_config": {"family": "gpt2", "num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                     "max_position_embeddings": 64}},
           "tokenizer": {"train": {"type": "bpe", "vocab_size": 300}},
           "pretrain": {"objective": "clm", "block_size": 16},
           "train": {"max_steps": 1, "precision": "fp32"}, "output_dir": str(tmp_path / "run"), "data": {}}
    accepted(run(tmp_path, cfg, "pretrain", name="corpus.jsonl", content=jsonl(rows + [{"text": 5}, {"text": None}])))
    refused(run(tmp_path, cfg, "pretrain", name="corpus.jsonl", content=jsonl(rows + [{"text": ["a"]}])),
            "data.text_column: 'text' holds a list in row 41")


def test_token_classification_cells(tmp_path, config):
    config["task"]["type"] = "token-classification"
    rows = [{"tokens": r["text"].split()[:3], "tags": [" O", "B-X ", "O"]} for r in ROWS]
    accepted(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)),
             "data: stripped spaces around 16 tags (train)", "train 8 examples")
    rows = [dict(r, tags="O B-X O") for r in rows]
    refused(run(tmp_path, config, name="train.jsonl", content=jsonl(rows)),
            "data.tags_column: 'tags' holds 'O B-X O' in row 1 of the train data", "not a list")
