"""The plain trl script the `dpo` benchmark races llmkit against: DPO + LoRA as a user writes it with trl alone.

    python scripts/bench/dpo_trl.py PAIRS.jsonl MODEL_DIR [--precision fp32|bf16] [--output-dir DIR]

trl's `DPOTrainer` with a peft `LoraConfig` (trl then computes the reference with the adapter disabled, as
llmkit does) on a JSONL of prompt / chosen / rejected strings, with the settings of
configs/adapter/smollm2-dpo-lora.yaml: LoRA r 16, alpha 32, dropout 0 on all linear layers; sigmoid (DPO) loss,
beta 0.1; max_length 192; batch 4 x accumulation 2, learning rate 2e-4, cosine schedule, warm-up 0.1 of the
steps, 1 epoch, seed 42, logging every 2 steps, no evaluation, no saving; `--precision bf16` sets bf16 (autocast
mixed precision over the checkpoint's weights, fp32 for the converted SmolLM2) as llmkit's train.precision bf16
does; the weights load in the checkpoint's dtype, as llmkit loads them. Settings the config does
not name keep trl's defaults, except gradient checkpointing, which trl turns on by default and llmkit does not
use: it is off here too.

The pairs are given to trl in its conversational format (the prompt a user message, each answer an assistant
message) when the tokenizer has a chat template, so trl renders them with the model's chat template as llmkit
does; with no template they go in as plain strings (trl then appends EOS to each answer).

Truncation differs (trl has no setting like llmkit's): llmkit cuts the start of the prompt first, keeping at
least half of max_length for it, then the end of the answers, and keeps every pair; trl 1.16 keeps the start of
each prompt + answer sequence (`truncation_mode="keep_start"`, its only non-deprecated mode), so a long pair loses
the end of its answer, and drops pairs whose prompt alone has max_length tokens or more. Both sides train on
sequences of at most max_length tokens; the pair count printed here is what trl kept.

It imports nothing from llmkit and is run as its own process. It prints one JSON line: train_runtime (seconds,
the Trainer's own), optimizer steps, pairs, pairs_per_second (pairs trained / train_runtime: each pair once, one
epoch), tokens (non-padding tokens of the chosen and rejected sequences, trl's num_tokens), train_loss (the
mean over the run), final_loss (the last logged loss), seconds_in_script.
"""

from __future__ import annotations

import argparse
import json
import logging
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", help="JSONL of {prompt, chosen, rejected} strings (every row is trained on).")
    p.add_argument("model", help="A local transformers model directory (weights + tokenizer).")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--output-dir", default="dpo-trl-output")
    args = p.parse_args()
    start = time.perf_counter()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    logging.getLogger("trl").setLevel(logging.ERROR)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pairs = load_dataset("json", data_files=args.pairs, split="train")
    if tokenizer.chat_template:
        pairs = pairs.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}],
                                       "chosen": [{"role": "assistant", "content": row["chosen"]}],
                                       "rejected": [{"role": "assistant", "content": row["rejected"]}]})

    config = DPOConfig(
        output_dir=args.output_dir,
        beta=0.1, loss_type=["sigmoid"],
        max_length=192, truncation_mode="keep_start",  # llmkit: prompt start first (see the docstring)
        precompute_ref_log_probs=False,  # llmkit's preference.precompute_ref default: the reference at every step
        per_device_train_batch_size=4, gradient_accumulation_steps=2,
        learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.1,
        num_train_epochs=1, seed=42,
        eval_strategy="no", save_strategy="no", logging_steps=2, report_to="none", disable_tqdm=True,
        bf16=args.precision == "bf16",  # DPOConfig defaults to bf16=True: set both ways, like llmkit's precision
        gradient_checkpointing=False,  # DPOConfig defaults to True; llmkit trains without it
        use_cpu=not torch.cuda.is_available(),
        model_init_kwargs={"dtype": "auto"},  # the checkpoint's dtype, as llmkit loads it (trl's default: float32)
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=args.model, args=config, train_dataset=pairs, processing_class=tokenizer,
                         peft_config=lora)
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]  # cumulative, non-padding
    runtime = result.metrics["train_runtime"]
    n = len(trainer.train_dataset)
    print(json.dumps({"train_runtime": round(runtime, 4), "steps": trainer.state.global_step, "pairs": n,
                      "pairs_in_file": len(pairs), "pairs_per_second": round(n / runtime, 4),
                      "tokens": int(tokens[-1]) if tokens else None,
                      "train_loss": result.metrics.get("train_loss"), "final_loss": losses[-1] if losses else None,
                      "precision": args.precision, "trl": __import__("trl").__version__,
                      "seconds_in_script": round(time.perf_counter() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
