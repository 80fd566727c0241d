"""Evaluation batches ordered by length (GuardedTrainer._get_eval_sampler): less padding, the same figures."""

import numpy as np
import pytest


def lengths_dataset(lengths, vocab=50, seed=0):
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    rows = [{"input_ids": [2] + rng.integers(5, vocab, n - 2).tolist() + [3], "labels": int(i % 2)}
            for i, n in enumerate(lengths)]
    return Dataset.from_list(rows)


def test_length_order_is_longest_first_and_stable():
    from llmkit.training.trainer import length_order

    assert length_order(lengths_dataset([3, 5, 4, 5, 3])) == [1, 3, 2, 0, 4]
    assert length_order(lengths_dataset([4]).rename_column("input_ids", "chosen_input_ids")) is None
    assert length_order([{"input_ids": [1, 2]}]) is None  # not a datasets.Dataset: transformers' sampler


def trainer_for(tmp_path, tokenizer_dir, dataset, **args):
    from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding, TrainingArguments

    from llmkit.training.trainer import GuardedTrainer
    from tests.recipes.helpers import tiny_bert_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer))

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean()),
                "first_label": int(p.label_ids[0])}

    return GuardedTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                              report_to="none", **args),
                          eval_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
                          compute_metrics=accuracy)


@pytest.mark.parametrize("strategy", ["random", "group_by_length"])
def test_eval_batches_pad_less_and_give_the_same_metrics(tmp_path, tokenizer_dir, monkeypatch, strategy):
    from llmkit.training import trainer as guarded

    lengths = [int(n) for n in np.random.default_rng(1).integers(4, 60, 61)]
    data = lengths_dataset(lengths)
    trainer = trainer_for(tmp_path, tokenizer_dir, data, per_device_eval_batch_size=8,
                          train_sampling_strategy=strategy)
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_eval_dataloader()]
    longest_first = sorted(lengths, reverse=True)
    assert widths == longest_first[::8]  # each batch as wide as its own longest row
    sorted_metrics = trainer.evaluate()
    monkeypatch.setattr(guarded, "length_order", lambda dataset: None)  # transformers' own sampler
    plain = trainer_for(tmp_path, tokenizer_dir, data, per_device_eval_batch_size=8,
                        train_sampling_strategy=strategy)
    plain.model.load_state_dict(trainer.model.state_dict())
    plain_widths = [batch["input_ids"].shape[1] for batch in plain.get_eval_dataloader()]
    assert sum(plain_widths) > sum(widths)  # the old order padded more
    plain_metrics = plain.evaluate()
    assert sorted_metrics["eval_accuracy"] == plain_metrics["eval_accuracy"]
    assert sorted_metrics["eval_loss"] == pytest.approx(plain_metrics["eval_loss"], abs=1e-6)
    # predictions and labels travel together in sampler order: the first label seen is the longest row's
    assert sorted_metrics["eval_first_label"] == int(data[int(np.argmax(lengths))]["labels"])
