"""The benchmark runner's plumbing (the benchmarks themselves are run, not unit-tested: they print figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402
from common import paired_ratio, result  # noqa: E402


def test_result_records_the_ratio_and_the_target():
    r = result("x", 3.0, "tokens/s", baseline=4.0, baseline_name="plain", target=">= 0.95", meets=False,
               settings={"batch": 8})
    assert r == {"name": "x", "value": 3.0, "unit": "tokens/s", "baseline": 4.0, "baseline_name": "plain",
                 "ratio": 0.75, "target": ">= 0.95", "meets_target": False, "settings": {"batch": 8}}
    assert paired_ratio([2.0, 3.0, 10.0], [1.0, 3.0, 4.0]) == 2.0  # median of 2, 1, 2.5


def test_every_benchmark_group_resolves_to_a_function():
    for name in bench.BENCHMARKS:
        assert callable(bench.benchmark(name))


def test_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--data-dir", str(tmp_path)])
    assert "has no sst2/train.tsv" in capsys.readouterr().err
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(SystemExit):
        bench.parse_args(["--data-dir", str(tmp_path), "--only", "startup,speed"])
    assert "unknown benchmark(s) speed" in capsys.readouterr().err
    assert bench.parse_args(["--data-dir", str(tmp_path), "--only", "startup,eval"]).groups == ["startup", "eval"]


@pytest.fixture(scope="module")
def tiny_tta(tmp_path_factory, tokenizer_dir):
    """A tiny BERT saved like a downloaded checkpoint, and sst2/train.tsv + dev.tsv of synthetic reviews."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tests.conftest import sentiment_rows
    from tests.recipes.helpers import tiny_bert_config

    root = tmp_path_factory.mktemp("tta")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    BertForSequenceClassification(tiny_bert_config(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for name, n, seed in (("train", 48, 1), ("dev", 32, 2)):
        path = root / "data" / "sst2" / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sentence\tlabel\n" + "".join(f"{r['text']}\t{int(r['label'] == 'positive')}\n"
                                                     for r in sentiment_rows(n, seed)))
    return root


def test_tta_runs_both_sides_as_processes_and_records_the_ratio(tiny_tta, tmp_path):
    """Both real sides (llmkit finetune on the shipped SST-2 config, the plain Trainer script) at a tiny size;
    run side by side here to keep the test short (the benchmark alternates them)."""
    from concurrent.futures import ThreadPoolExecutor

    import tta_benchmarks as tta
    from common import Context

    ctx = Context(data_dir=tiny_tta / "data", quick=True, work_dir=tmp_path, tta_rows=32,
                  tta_model=str(tiny_tta / "model"))
    train = tta.head_lines(ctx, ctx.data_dir / "sst2" / "train.tsv", 33, "train-32.tsv")
    dev = tta.dev_file(ctx, None)
    with ThreadPoolExecutor(2) as pool:
        ours, plain = (pool.submit(fn, ctx, side, train, dev, ctx.tta_model, 7)
                       for side, fn in (("llmkit", tta.run_llmkit), ("plain", tta.run_plain)))
        sides = {"llmkit": [ours.result()], "plain": [plain.result()]}
    assert sides["llmkit"][0]["seed"] == sides["plain"][0]["seed"] == 7  # --seeds reaches both trainings
    record = tta.tta_record(ctx, sides, 32)
    assert record["name"] == "time_to_accuracy" and record["settings"]["rows"] == 32
    assert record["paired_ratio"] == pytest.approx(sides["llmkit"][0]["seconds"] / sides["plain"][0]["seconds"],
                                                   abs=1e-4)
    assert set(record["accuracy"]) == {"llmkit", "plain"} and all(0 <= a <= 1 for a in record["accuracy"].values())
    assert record["meets_target"] == (record["paired_ratio"] <= 0.4
                                      and record["accuracy"]["llmkit"] >= record["accuracy"]["plain"])
    assert all(run["train_seconds"] > 0 for runs in sides.values() for run in runs)
    with pytest.raises(SystemExit):
        bench.parse_args(["--data-dir", str(ctx.data_dir), "--only", "tta", "--tta-rows", "0"])


def test_tta_accuracy_is_the_mean_over_seeds_and_the_median_over_repeats(tmp_path):
    import tta_benchmarks as tta
    from common import Context

    runs = {"llmkit": [(10.0, 0.80), (10.0, 0.90), (10.0, 0.91)], "plain": [(30.0, 0.85), (30.0, 0.86), (30.0, 0.87)]}
    sides = {side: [{"seconds": s, "accuracy": a, "train_seconds": 1.0} for s, a in v] for side, v in runs.items()}
    by_seed = tta.tta_record(Context(data_dir=tmp_path, quick=True, work_dir=tmp_path, tta_seeds=[1, 2, 3]), sides, 8)
    assert by_seed["accuracy"] == {"llmkit": pytest.approx(0.87), "plain": pytest.approx(0.86)}
    assert by_seed["meets_target"] and by_seed["settings"]["seeds"] == [1, 2, 3]
    repeated = tta.tta_record(Context(data_dir=tmp_path, quick=True, work_dir=tmp_path, tta_rounds=3), sides, 8)
    assert repeated["accuracy"] == {"llmkit": 0.9, "plain": 0.86} and repeated["meets_target"]
    assert tta.parse_seeds("42, 43,44") == [42, 43, 44] and tta.parse_seeds(None) is None


@pytest.fixture(scope="module")
def tiny_dpo(tmp_path_factory, chat_tokenizer_dir):
    """A 2-layer Llama saved with the tests' chat tokenizer, and preference/train_clean.jsonl: a pair whose prompt
    fills max_length, one with identical answers, then 20 short pairs."""
    import json

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("dpo")
    tokenizer = AutoTokenizer.from_pretrained(chat_tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = [{"prompt": "hello world " * 120, "chosen": "great", "rejected": "awful"},
            {"prompt": "say a word", "chosen": "great", "rejected": "great"}]
    good, bad = "great and wonderful", "awful and terrible"
    rows += [{"prompt": f"say a {word} word", "chosen": good if word == "good" else bad,
              "rejected": bad if word == "good" else good} for word in ("good", "bad") * 10]
    path = root / "data" / "preference" / "train_clean.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_dpo_runs_llmkit_and_trl_on_the_same_pairs_and_records_the_ratio(tiny_dpo, tmp_path, capsys):
    """The whole group (quick: no warm-up, one round) on a tiny Llama: llmkit adapter on the shipped DPO config
    and trl's DPOTrainer script, 16 pairs each, 2 optimizer steps each (batch 4 x accumulation 2)."""
    import dpo_benchmarks as dpo
    from common import Context

    ctx = Context(data_dir=tiny_dpo / "data", quick=True, work_dir=tmp_path)
    ctx.dpo = {"pairs": 16, "model": str(tiny_dpo / "model"), "precision": "fp32"}
    record = dpo.bench_dpo(ctx)[0]
    assert record["name"] == "dpo_training_throughput" and record["unit"] == "pairs/s (training time)"
    assert {"value", "baseline", "ratio", "paired_ratio", "target", "meets_target", "pairs_per_second",
            "tokens_per_second", "train_runtime", "pairs", "steps", "final_loss", "settings"} <= set(record)
    assert record["pairs"] == {"llmkit": 16, "trl": 16} and record["steps"] == {"llmkit": 2, "trl": 2}
    rate = record["pairs_per_second"]
    assert rate["llmkit"] > 0 and rate["trl"] > 0 and record["value"] == rate["llmkit"]
    assert record["paired_ratio"] == pytest.approx(rate["llmkit"] / rate["trl"], rel=1e-3)
    assert record["meets_target"] == (record["paired_ratio"] >= 0.9)
    assert all(t > 0 for t in record["tokens_per_second"].values())
    assert all(200 < rss < 20_000 for rss in record["peak_rss_mib"].values())  # each side's own process, in MiB
    assert all(loss == pytest.approx(0.6931, abs=0.05) for loss in record["final_loss"].values())
    settings = record["settings"]
    assert settings["pairs"] == 16 and settings["precision"] == "fp32" and settings["rounds"] == 1
    # the long prompt (trl would drop it) and the identical answers (llmkit would) were left out of the file
    picked = (tmp_path / "data").glob("preference-fitting-16-*.jsonl")
    assert "hello world" not in next(picked).read_text()
    for bad in (["--dpo-pairs", "0"], ["--dpo-rounds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(["--data-dir", str(ctx.data_dir), "--only", "dpo", *bad])
        assert "--dpo-pairs / --dpo-rounds: expected a positive number" in capsys.readouterr().err


def test_memory_sft_measures_llmkit_and_a_plain_loop_on_the_same_examples(tiny_dpo, tmp_path, capsys):
    """The memory group's sft comparison alone (--memory-kinds sft) on a tiny Llama: llmkit finetune on the shipped
    SmolLM2 SFT config and the plain AdamW loop, each in its own process, 2 optimizer steps of 4 x 2 examples out of
    32 alpaca rows; both fed the same examples (the Trainer's seeded order): the same token count."""
    import json

    import training_benchmarks as tb
    from common import Context

    rows = [{"instruction": f"say {'a good ' * (1 + i % 5)}word", "input": "hello world" if i % 3 else "",
             "output": " ".join(["great and wonderful"] * (1 + i % 7))} for i in range(40)]
    (tmp_path / "data" / "alpaca").mkdir(parents=True)
    (tmp_path / "data" / "alpaca" / "alpaca_2k.json").write_text(json.dumps(rows))
    (tmp_path / "data" / "sst2").mkdir()
    (tmp_path / "data" / "sst2" / "train.tsv").write_text("sentence\tlabel\n")  # what --data-dir is checked for
    args = bench.parse_args(["--data-dir", str(tmp_path / "data"), "--only", "memory", "--memory-kinds", "sft",
                             "--memory-sft-model", str(tiny_dpo / "model"), "--memory-sft-steps", "2",
                             "--memory-precision", "fp32"])
    assert (args.memory_kinds, args.memory_sft_steps, args.memory_precision) == (("sft",), 2, "fp32")
    ctx = Context(data_dir=tmp_path / "data", quick=True, work_dir=tmp_path / "work",
                  memory={"kinds": args.memory_kinds, "sft_model": args.memory_sft_model,
                          "sft_steps": args.memory_sft_steps, "precision": args.memory_precision})
    [record] = tb.bench_memory(ctx)
    assert record["name"] == "peak_rss_sft" and record["unit"] == "MB"
    assert {"value", "baseline", "baseline_name", "ratio", "fed", "settings"} <= set(record)
    assert 100 < record["value"] < 20_000 and 100 < record["baseline"] < 20_000  # each process's own peak, MB
    assert record["ratio"] == pytest.approx(record["value"] / record["baseline"], abs=1e-3)
    settings = record["settings"]
    assert {"model", "batch", "steps", "max_length", "precision", "data", "feeds"} <= set(settings)
    assert (settings["batch"], settings["gradient_accumulation_steps"], settings["steps"]) == (4, 2, 2)
    assert settings["precision"] == "fp32" and settings["max_length"] == 384
    assert settings["model"] == str(tiny_dpo / "model")
    assert Path(settings["model_dir"]) == (tiny_dpo / "model").resolve()  # where llmkit resolves it
    assert settings["attention"] == {"llmkit": "sdpa", "plain": "sdpa"}
    plain, ours = record["fed"]["plain"], record["fed"]["llmkit"]
    assert plain["steps"] == 2 and plain["examples"] == 16 and plain["positions"] >= plain["tokens"] > 16
    # the same 16 of the 32 examples on both sides: llmkit's Trainer counts the packed rows' tokens that are not pad
    assert ours["train_tokens"] == plain["tokens_not_pad_id"] == plain["tokens"]
    assert 0 < plain["last_loss"] < 20 and 0 < ours["train_loss"] < 20
    assert json.loads((tmp_path / "work" / "memory" / "sft.json").read_text())["train"]["max_steps"] == 2
    for bad in (["--memory-kinds", "sft,disk"], ["--memory-sft-steps", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(["--data-dir", str(tmp_path / "data"), *bad])
        assert "--memory-kinds / --memory-sft-steps" in capsys.readouterr().err


def test_profile_ops_maps_op_names_to_families():
    import profile_ops

    expected = {"aten::addmm": "matmul", "AddmmBackward0": "matmul", "aten::mm": "matmul", "aten::linear": "matmul",
                "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
                "aten::_softmax": "softmax/dropout/activation", "aten::native_dropout": "softmax/dropout/activation",
                "_MaskedScale": "softmax/dropout/activation", "_MaskedScaleBackward": "softmax/dropout/activation",
                "aten::gelu_backward": "softmax/dropout/activation", "NativeLayerNormBackward0": "layer norm",
                "aten::embedding_dense_backward": "embedding", "aten::cross_entropy_loss": "loss",
                "LogSoftmaxBackward0": "loss", "aten::_foreach_norm": "optimizer", "aten::_to_copy": "copies/casts",
                "ToCopyBackward0": "copies/casts", "aten::add_": "elementwise", "aten::view": "other",
                "torch::autograd::AccumulateGrad": "other"}
    assert {name: profile_ops.family_of(name) for name in expected} == expected
    assert profile_ops.whole_scope("Optimizer.step#AdamW.step") == "optimizer"
    assert profile_ops.whole_scope("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__") == "data"


def test_profile_ops_profiles_real_training_steps_by_family(tiny_config, tmp_path):
    """scripts/bench/profile_ops.py on a tiny from-config BERT: the real `llmkit finetune`, 1 warm-up step, 2
    profiled, 2 timed without the profiler; the JSON line's shares cover the profiled wall time."""
    import json
    import os
    import subprocess

    import profile_ops

    from tests.conftest import write_yaml

    config = write_yaml(tmp_path / "tiny.yaml", tiny_config)
    out = subprocess.run([sys.executable, str(BENCH / "profile_ops.py"), str(config), "--skip", "1", "--steps", "2",
                          "--output-dir", str(tmp_path / "profiled")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                              "HF_DATASETS_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    families = record["families"]
    assert list(families) == list(profile_ops.FAMILIES)
    assert sum(f["share"] for f in families.values()) == pytest.approx(1.0, abs=0.01)
    assert sum(f["seconds"] for f in families.values()) == pytest.approx(record["wall_s"], rel=0.01)
    assert families["matmul"]["seconds"] > 0 and families["optimizer"]["seconds"] > 0
    assert families["data"]["seconds"] > 0 and families["Python / framework"]["seconds"] >= 0
    assert record["steps"] == 2 and len(record["step_s"]) == 2 and record["wall_s"] > 0
    assert record["tokens_per_step"] > 0 and record["unprofiled"]["steps"] == 2
    assert record["command"] == "finetune" and "train.max_steps=6" in record["overrides"]
    assert "matmul" in out.stdout.splitlines()[1] and (tmp_path / "profiled" / "model").is_dir()


def test_mfu_is_taken_against_the_best_matmul_peak_of_the_machine(monkeypatch):
    """On a CPU whose bf16 matmuls are slower than fp32's, fp32's peak is the ceiling, whatever the run used."""
    import training_benchmarks as tb
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    monkeypatch.setattr(tb, "matmul_peak", lambda precision, quick: {"fp32": 300e9, "bf16": 150e9}[precision])
    for precision in ("bf16", "fp32"):
        record = tb.mfu(model, 1e6, precision, block=32, quick=True)
        achieved = record["settings"]["achieved_flops_per_second"]
        assert record["value"] == pytest.approx(achieved / 300e9, abs=1e-4)
        assert record["of_run_precision_peak"] == pytest.approx(achieved / (150e9 if precision == "bf16" else 300e9),
                                                                abs=1e-4)
    n = sum(p.numel() for p in model.parameters()) - 64 * 16 - 32 * 16 + 64 * 16  # tied LM head counted once
    assert record["settings"]["flops_per_token"] == 6 * n + 12 * 2 * 16 * 32


def test_bench_table_renders_every_record_and_lists_failed_groups(tmp_path, capsys):
    import json

    import bench_table

    report = {"mode": "full", "total_seconds": 12.0, "machine": {"cpu_cores": 2, "precision_auto": "fp32"},
              "results": [result("a_loop", 983.34, "tokens/s", baseline=969.0, baseline_name="plain loop",
                                 target=">= 0.95", meets=True, paired_ratio=0.9897),
                          result("mfu", 0.4819, "fraction")],
              "errors": {"dpo": "RuntimeError: trl missing"}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    assert bench_table.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| a_loop | 983 tokens/s | 969 (plain loop) | 0.9897 | >= 0.95 | yes |" in out
    assert "| mfu | 0.4819 fraction | — | — | — | — |" in out
    assert "- dpo: RuntimeError: trl missing" in out and "`precision: auto` → fp32" in out
    assert bench_table.main([]) == 2


def test_bench_table_escapes_pipes_inside_cells(tmp_path, capsys):
    import json

    import bench_table

    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"results": [result("gap", 0.0, "points (|bf16 - fp32| dev accuracy)")]}))
    assert bench_table.main([str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| gap"))
    assert row.replace("\\|", "").count("|") == 7  # six cells
