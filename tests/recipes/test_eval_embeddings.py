"""`llmkit eval` of sentence embeddings (eval.task sts and retrieval) through the real CLI, on tiny random BERT
encoders built here (a plain transformers directory, and the same model saved in the sentence-transformers
format with CLS pooling). The figures are checked against hand computations: numpy cosine + scipy on the
embeddings of sentence_transformers.SentenceTransformer(path).encode, and on token vectors pooled by hand."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from tests.conftest import NEGATIVE, NEUTRAL, POSITIVE, write_csv, write_yaml
from tests.recipes.helpers import invoke, save_model_dir, tiny_bert_config

pytest.importorskip("sentence_transformers")
pytest.importorskip("scipy")

WORDS = POSITIVE + NEGATIVE + NEUTRAL
COLUMNS = ["data.text_column=first", "data.text_pair_column=second"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, tokenizer_dir) -> dict[str, str]:
    """A tiny random BERT encoder as a plain transformers directory ("plain") and in the sentence-transformers
    format with CLS pooling ("st")."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from llmkit.models.embedding import build_sentence_model, save_sentence_model

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    # a wide initialisation: with BERT's 0.02, a random model's CLS vectors are all alike (cosine 1.0)
    config = tiny_bert_config(tokenizer, labels=False, initializer_range=0.5)
    plain = save_model_dir(tmp_path_factory, "plain-bert", BertModel(config), tokenizer)
    st = tmp_path_factory.mktemp("st-bert")
    save_sentence_model(build_sentence_model(plain, "cls"), st)
    return {"plain": plain, "st": str(st)}


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(WORDS, rng.randint(3, 9))) for _ in range(n)]


def pair_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed + 100)
    return [{"first": a, "second": b, "score": round(rng.uniform(0, 5), 2)}
            for a, b in zip(sentences(n, seed), sentences(n, seed + 1))]


@pytest.fixture
def pairs(tmp_path):
    """dev.csv (24 scored pairs) and test.csv (16) with columns first, second, score."""
    dev, test = pair_rows(24, seed=1), pair_rows(16, seed=2)
    return {"dev": write_csv(tmp_path / "pairs/dev.csv", dev), "test": write_csv(tmp_path / "pairs/test.csv", test),
            "dev_rows": dev, "test_rows": test}


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def correlations(sims, gold) -> tuple[float, float]:
    from scipy.stats import pearsonr, spearmanr

    return spearmanr(sims, gold).statistic, pearsonr(sims, gold).statistic


def st_embeddings(path: str, texts: list[str], batch_size: int):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu").encode(texts, batch_size=batch_size)


def record(path) -> dict:
    return json.loads((path / "eval.json").read_text())


# ---------------------------------------------------------------- sts


def test_sts_of_a_sentence_transformers_directory_matches_a_hand_computation(tmp_path, encoders, pairs):
    from llmkit.models.embedding import encode, load_sentence_model

    out = tmp_path / "ev"
    result = invoke("eval", encoders["st"], "--data", pairs["dev"], f"data.test_file={pairs['test']}", *COLUMNS,
                    "eval.batch_size=8", "-o", out)
    assert result.exit_code == 0, result.output
    rec = record(out)
    assert rec["task"] == "sts"  # auto: a sentence-transformers directory
    assert rec["embedding_settings"]["pooling"] == "cls" and rec["embedding_settings"]["similarity"] == "cosine"
    for split, prefix in (("dev", "eval"), ("test", "test")):
        rows = pairs[f"{split}_rows"]
        first = st_embeddings(encoders["st"], [r["first"] for r in rows], 8)
        second = st_embeddings(encoders["st"], [r["second"] for r in rows], 8)
        spearman, pearson = correlations(cosine(first, second), [r["score"] for r in rows])
        assert rec["metrics"][f"{prefix}_spearman"] == pytest.approx(spearman, rel=1e-12, abs=1e-12)
        assert rec["metrics"][f"{prefix}_pearson"] == pytest.approx(pearson, rel=1e-12, abs=1e-12)
        assert rec["metrics"][f"{prefix}_examples"] == len(rows)
    # llmkit's loading and encoding give SentenceTransformer's embeddings, bit for bit
    texts = [r["first"] for r in pairs["dev_rows"]]
    ours = encode(load_sentence_model(encoders["st"], max_length=128), texts, batch_size=8)
    assert np.array_equal(ours, st_embeddings(encoders["st"], texts, 8))
    assert (out / "similarity_validation.png").stat().st_size > 0 and (out / "similarity_test.png").is_file()
    report = (out / "report.md").read_text()
    assert "## STS (cosine similarity vs gold score)" in report and "(similarity_test.png)" in report
    assert "eval_spearman" in result.output and "test_pearson" in result.output


def test_a_plain_directory_pools_by_mean_and_eval_pooling_overrides(tmp_path, encoders, pairs):
    import torch
    from transformers import AutoModel, AutoTokenizer

    rows = pairs["dev_rows"]
    tok = AutoTokenizer.from_pretrained(encoders["plain"])
    model = AutoModel.from_pretrained(encoders["plain"]).eval()

    def pooled(texts, how):
        batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        return (hidden[:, 0] if how == "cls" else (hidden * mask).sum(1) / mask.sum(1)).numpy()

    gold = [r["score"] for r in rows]
    for how, model_dir, extra in (("mean", encoders["plain"], []), ("cls", encoders["plain"], ["eval.pooling=cls"]),
                                  ("mean", encoders["st"], ["eval.pooling=mean"])):
        out = tmp_path / f"ev-{how}-{len(extra)}-{model_dir == encoders['st']}"
        result = invoke("eval", model_dir, "--data", pairs["dev"], *COLUMNS, "eval.task=sts", *extra, "-o", out)
        assert result.exit_code == 0, result.output
        spearman, pearson = correlations(cosine(pooled([r["first"] for r in rows], how),
                                                pooled([r["second"] for r in rows], how)), gold)
        rec = record(out)
        assert rec["embedding_settings"]["pooling"] == how
        assert rec["metrics"]["eval_spearman"] == pytest.approx(spearman, abs=1e-6)
        assert rec["metrics"]["eval_pearson"] == pytest.approx(pearson, abs=1e-6)


# ---------------------------------------------------------------- retrieval


def test_retrieval_ranks_and_metrics_on_known_embeddings():
    from llmkit.metrics.embedding import rank_positives, retrieval_metrics

    queries = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.1]]
    candidates = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    ranks = rank_positives(queries, candidates, [0, 2, 1, 0], chunk=3)  # two chunks
    # q0: its positive is the best; q1: its positive (cos 0) ties with c0 (cos 0), behind c1: ties count
    # against the query; q2: c0 and c1 tie at 0.707; q3: c0 first
    assert ranks.tolist() == [1, 3, 2, 1]
    figures = retrieval_metrics(ranks)
    assert figures == {"recall_at_1": 0.5, "recall_at_5": 1.0, "recall_at_10": 1.0,
                       "mrr": pytest.approx((1 + 1 / 3 + 1 / 2 + 1) / 4)}


def test_retrieval_known_answer_counts_duplicate_candidates_once(tmp_path, encoders):
    texts = sentences(12, seed=5)
    rows = [{"query": t, "positive": t} for t in texts] + [{"query": texts[3], "positive": texts[3]}]
    data = write_csv(tmp_path / "same.csv", rows)
    out = tmp_path / "ev"
    # batch 1: every text is encoded alone, so a query and the same text as a candidate get the same embedding
    result = invoke("eval", encoders["st"], "--data", data, "eval.task=retrieval", "data.text_column=query",
                    "data.text_pair_column=positive", "eval.batch_size=1", "-o", out)
    assert result.exit_code == 0, result.output
    m = record(out)["metrics"]
    assert (m["eval_examples"], m["eval_candidates"]) == (13, 12)  # the repeated positive is one candidate
    assert m["eval_recall_at_1"] == 1.0 and m["eval_mrr"] == 1.0  # twice, it would tie with itself: rank 2


def test_retrieval_matches_a_hand_ranking(tmp_path, encoders):
    queries, positives = sentences(20, seed=7), sentences(20, seed=8)
    positives[5] = positives[2]  # queries 2 and 5 share one positive: 19 candidates
    data = write_csv(tmp_path / "pairs.csv", [{"query": q, "positive": p} for q, p in zip(queries, positives)])
    out = tmp_path / "ev"
    result = invoke("eval", encoders["st"], "--data", data, "eval.task=retrieval", "data.text_column=query",
                    "data.text_pair_column=positive", "eval.batch_size=4", "-o", out)
    assert result.exit_code == 0, result.output
    candidates = list(dict.fromkeys(positives))
    q = st_embeddings(encoders["st"], queries, 4).astype(np.float64)
    c = st_embeddings(encoders["st"], candidates, 4).astype(np.float64)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
    ranks = [1 + sum(s > row[candidates.index(p)] for s in row) for row, p in zip(sims, positives)]
    m = record(out)["metrics"]
    assert m["eval_candidates"] == 19
    for k in (1, 5, 10):
        assert m[f"eval_recall_at_{k}"] == pytest.approx(np.mean([r <= k for r in ranks]))
    assert m["eval_mrr"] == pytest.approx(np.mean([1 / r for r in ranks]))
    assert "Retrieval (each query against all the positives)" in (out / "report.md").read_text()


# ---------------------------------------------------------------- run directories, library, compare


def sentence_run(tmp_path, encoders, name="run", section=None, model="st"):
    """A finished sentence-embedding run directory (its config.yaml and model/)."""
    run = tmp_path / name
    shutil.copytree(encoders[model], run / "model")
    config = {"model": {"name_or_path": encoders["plain"]},
              "data": {"text_column": "first", "text_pair_column": "second", "score_column": "score"},
              **(section or {"task": {"type": "sentence-embedding"}})}
    write_yaml(run / "config.yaml", config)
    return run


def test_a_sentence_embedding_run_is_evaluated_loaded_and_compared(tmp_path, encoders, pairs):
    import llmkit

    run = sentence_run(tmp_path, encoders)
    result = invoke("eval", run, "--data", pairs["dev"], "-o", tmp_path / "ev1")  # columns from the run
    assert result.exit_code == 0, result.output
    rec = record(tmp_path / "ev1")
    assert rec["task"] == "sts" and rec["run_directory"] == str(run.resolve())
    assert rec["settings"]["data"]["text_pair_column"] == "second"
    result = invoke("eval", run, "--data", pairs["dev"], "eval.task=retrieval", "-o", tmp_path / "ev2")
    assert result.exit_code == 0, result.output
    table = invoke("eval", "compare", tmp_path / "ev1", tmp_path / "ev2")
    assert table.exit_code == 0, table.output
    header = table.output.strip().splitlines()[0]
    assert header.startswith("| run | eval_spearman | eval_pearson | eval_recall_at_1 | eval_recall_at_5 |")

    from sentence_transformers import SentenceTransformer

    model, tokenizer = llmkit.load_model(str(run))
    assert isinstance(model, SentenceTransformer) and not model.training
    assert tokenizer is model.tokenizer and tokenizer("great film")["input_ids"][0] == tokenizer.cls_token_id
    texts = ["the film was great", "a dull plot"]
    assert np.array_equal(model.encode(texts), st_embeddings(encoders["st"], texts, 32))


def test_a_contrastive_pretraining_run_with_a_plain_model_is_sts_with_mean_pooling(tmp_path, encoders, pairs):
    run = sentence_run(tmp_path, encoders, section={"pretrain": {"objective": "contrastive"}}, model="plain")
    result = invoke("eval", run, "--data", pairs["dev"], "--dry-run")
    assert result.exit_code == 0, result.output
    assert "pooling mean" in result.output and "plan: eval.task sts on validation 24 pairs" in result.output


def test_a_hub_id_in_the_local_cache_keeps_its_sentence_transformers_modules(tmp_path, encoders, monkeypatch):
    from huggingface_hub import constants

    from llmkit.models.embedding import load_sentence_model, local_sentence_dir, pooling_in

    repo = tmp_path / "hub" / "models--someone--tiny-st"
    shutil.copytree(encoders["st"], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert local_sentence_dir("someone/tiny-st") == str(repo / "snapshots" / "abc123")
    assert local_sentence_dir("someone/not-cached") is None and local_sentence_dir(encoders["plain"]) is None
    assert pooling_in(load_sentence_model("someone/tiny-st")) == "cls"  # not mean pooling over its encoder


# ---------------------------------------------------------------- dry run, smoke


def test_dry_run_checks_everything_and_writes_nothing(tmp_path, encoders, pairs):
    out = tmp_path / "ev"
    result = invoke("eval", encoders["st"], "--data", pairs["dev"], *COLUMNS, "data.score_range=[0,5]",
                    "--dry-run", "-o", out)
    assert result.exit_code == 0, result.output
    assert "pooling cls" in result.output and "plan: eval.task sts on validation 24 pairs" in result.output
    assert not out.exists()
    bad = invoke("eval", encoders["st"], "--data", pairs["dev"], *COLUMNS, "data.score_range=[0,4]", "--dry-run",
                 "-o", out)
    assert bad.exit_code == 2 and "data.score_range" in bad.output and not out.exists()


def test_smoke_keeps_the_pooling_of_a_sentence_transformers_model(tmp_path, encoders, pairs):
    out = tmp_path / "smoke"
    result = invoke("eval", encoders["st"], "--data", pairs["dev"], *COLUMNS, "--smoke", "-o", out)
    assert result.exit_code == 0, result.output
    assert "eval.task auto is sts" in result.output
    assert "the tiny copy pools as the real model: eval.pooling cls" in result.output
    rec = record(out)
    assert rec["task"] == "sts" and rec["embedding_settings"]["pooling"] == "cls"
    assert rec["settings"]["eval"]["smoke"] is True and rec["metrics"]["eval_examples"] == 24


# ---------------------------------------------------------------- the STS Benchmark's file layout


STSB_LIKE = ("main-captions\tMSRvid\t2012test\t0024\t2.500\tA girl is styling her hair.\tA girl is brushing "
             "her hair.\n"
             "main-forums\tanswer-answer\t2016\t0376\t4.000\tMy answer is \"Probably Not\".\tThe short answer "
             "is: No.\tStackExchange Network\tStackExchange Network\n"
             "main-news\theadlines\t2016\t1432\t0.000\tSouth Korea declares end to MERS outbreak\tNorth Korea "
             "delegation meets officials\n")
STSB_NAMES = ["genre", "file", "year", "id", "score", "sentence1", "sentence2", "source1", "source2"]


def test_stsb_layout_reads_with_config_alone(tmp_path, encoders):
    from llmkit.config.sections import DataConfig
    from llmkit.data.loading import load_file_split

    path = tmp_path / "sts-test.csv"
    path.write_text(STSB_LIKE)
    cfg = DataConfig(format="tsv", column_names=STSB_NAMES, text_column="sentence1", text_pair_column="sentence2")
    ds = load_file_split("validation_file", str(path), cfg)
    assert len(ds) == 3 and ds[1]["sentence1"] == 'My answer is "Probably Not".'
    assert (ds[0]["source1"], ds[0]["source2"], ds[1]["source2"]) == (None, None, "StackExchange Network")
    assert ds["score"] == [2.5, 4.0, 0.0]
    config = {"model": {"name_or_path": encoders["st"]},
              "data": {"validation_file": str(path), "format": "tsv", "column_names": STSB_NAMES,
                       "text_column": "sentence1", "text_pair_column": "sentence2", "score_range": [0, 5]},
              "eval": {"task": "sts"}, "output_dir": str(tmp_path / "ev")}
    result = invoke("eval", write_yaml(tmp_path / "stsb.yaml", config))
    assert result.exit_code == 0, result.output
    assert record(tmp_path / "ev")["metrics"]["eval_examples"] == 3


# ---------------------------------------------------------------- bad input: exit 2, the key, the value, the fix


BAD = {
    "pair-column-missing": (["data.text_column=first", "data.text_pair_column=other"], None,
                            ("data.text_pair_column", "'other' is not a column", "first, second, score",
                             "Set data.text_pair_column to one of them")),
    "pair-column-unset": (["data.text_column=first", "eval.task=sts"], None,
                          ("data.text_pair_column", "eval.task sts reads pairs", "set it to the column")),
    "score-not-numeric": (COLUMNS, "first,second,score\na b,c d,1.5\ne f,g h,n/a\ni j,k l,3\n",
                          ("data.score_column", "'score' holds values that are not numbers", "row 2", "'n/a'",
                           "set data.score_column to the column with the scores")),
    "score-missing": (COLUMNS, "first,second,score\na b,c d,1.5\ne f,g h,\ni j,k l,3\n",
                      ("data.score_column", "'score' is empty in row 2", "every pair needs its gold score")),
    "score-outside-range": ([*COLUMNS, "data.score_range=[0,5]"], "first,second,score\na b,c d,1.5\ne f,g h,7\n"
                            "i j,k l,-1\n", ("data.score_range", "rows 2, 3", "outside [0, 5]", "(7, -1)",
                                             "set data.score_range to the range the scores lie in")),
    "score-range-reversed": ([*COLUMNS, "data.score_range=[5,0]"], None,
                             ("data.score_range", "low must be below high", "[0, 5]")),
    "scores-all-equal": (COLUMNS, "first,second,score\na b,c d,3\ne f,g h,3\n",
                         ("data.score_column", "every gold score", "is 3", "scores that differ")),
    "empty-pairs-file": (COLUMNS, "", ("data.validation_file", "is empty", "check that this is the right file")),
    "header-only-pairs-file": (COLUMNS, "first,second,score\n", ("data.validation_file", "empty (0 rows)")),
    "retrieval-one-pair": ([*COLUMNS, "eval.task=retrieval"], "first,second,score\na b,c d,1\n",
                           ("data.validation_file", "eval.task retrieval", "at least 2 (query, positive) pairs",
                            "has 1")),
    "retrieval-one-positive": ([*COLUMNS, "eval.task=retrieval"], "first,second,score\na b,c d,1\ne f,c d,2\n",
                               ("data.validation_file", "share one positive text", "at least 2 different")),
    "pooling-on-perplexity": ([*COLUMNS, "eval.task=perplexity", "eval.pooling=cls"], None,
                              ("eval.pooling", "only applies to sentence embeddings", "remove eval.pooling")),
    "pooling-unknown": ([*COLUMNS, "eval.pooling=max"], None, ("eval.pooling", "'max'", "'mean', 'cls'")),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_naming_the_key_the_value_and_the_fix(tmp_path, encoders, pairs, case):
    overrides, text, expected = BAD[case]
    data = pairs["dev"]
    if text is not None:
        data = tmp_path / "bad.csv"
        data.write_text(text)
    out = tmp_path / "ev"
    for dry in ([], ["--dry-run"]):
        result = invoke("eval", encoders["st"], "--data", data, *overrides, *dry, "-o", out)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        for part in expected:
            assert part in result.output, (part, result.output)
        assert not out.exists()


def test_a_classification_adapter_run_is_refused_for_sts(tmp_path, encoders, pairs, monkeypatch):
    from llmkit.recipes import evaluation

    (tmp_path / "llmkit_adapter.json").write_text(json.dumps({"task": "sequence-classification"}))
    monkeypatch.setattr(evaluation, "find_adapter_dir", lambda name: tmp_path)
    result = invoke("eval", encoders["st"], "--data", pairs["dev"], *COLUMNS, "eval.task=sts", "--dry-run")
    assert result.exit_code == 2 and "llmkit adapter merge" in result.output, result.output


def test_sts_of_a_constant_prediction_writes_a_null_correlation(tmp_path, tokenizer_dir, pairs):
    """docs/commands/eval.md: "A prediction with no variance has no correlation: written as null". An encoder
    whose last LayerNorm gives every token the same vector (weight 0, bias 1) makes every pair's cosine 1.0: the
    gold scores vary, the prediction does not, and eval.json holds null (not NaN) for both correlations."""
    import torch
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = BertModel(tiny_bert_config(tokenizer, labels=False))
    with torch.no_grad():
        model.encoder.layer[-1].output.LayerNorm.weight.zero_()
        model.encoder.layer[-1].output.LayerNorm.bias.fill_(1.0)
    constant = tmp_path / "constant-bert"
    model.save_pretrained(constant)
    tokenizer.save_pretrained(constant)
    out = tmp_path / "ev"
    result = invoke("eval", constant, "--data", pairs["dev"], *COLUMNS, "eval.task=sts", "-o", out)
    assert result.exit_code == 0, result.output
    assert "every pair of the validation data is equally similar to the model: no correlation (null)" in \
        " ".join(result.output.split())
    text = (out / "eval.json").read_text()
    assert "NaN" not in text and '"eval_spearman": null' in text and '"eval_pearson": null' in text
    rec = json.loads(text)
    assert rec["metrics"]["eval_spearman"] is None and rec["metrics"]["eval_pearson"] is None
    assert rec["metrics"]["eval_examples"] == 24
    assert len({r["score"] for r in pairs["dev_rows"]}) > 1  # the gold scores vary: the prediction is constant
