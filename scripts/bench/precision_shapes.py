"""bf16 autocast against fp32 on this CPU, in plain transformers (no llmkit): one training step (forward,
backward, AdamW) of a 4-layer SmolLM2-shaped Llama on one 1,536-token row and of a MiniLM-shaped BERT classifier
at 32 x 16 and 32 x 128 tokens, each precision twice, alternating. Prints seconds per step.

    python scripts/bench/precision_shapes.py

Whether bf16 pays on a CPU is not told by its flags (docs/BENCHMARKS.md, time to accuracy): this measures it.
"""

from __future__ import annotations

import time

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM


def seconds_per_step(model, inputs: dict, bf16: bool, steps: int = 4) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
                                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                         attn_implementation="sdpa"))
    ids = torch.randint(0, 49152, (1, 1536))
    cases = [("smollm2-shaped, 4 layers, 1 x 1536", llama, {"input_ids": ids, "labels": ids})]
    bert = BertForSequenceClassification(BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                                    num_attention_heads=12, vocab_size=30522))
    for length in (16, 128):
        ids = torch.randint(0, 30522, (32, length))
        cases.append((f"minilm-shaped, 32 x {length}", bert, {"input_ids": ids,
                                                               "labels": torch.zeros(32, dtype=torch.long)}))
    for name, model, inputs in cases:
        for bf16 in (False, True, False, True):
            print(f"{name}  {'bf16' if bf16 else 'fp32'}  {seconds_per_step(model, inputs, bf16):.3f} s/step")


if __name__ == "__main__":
    main()
