"""`llmkit finetune`: full fine-tuning for sequence classification (single- and multi-label), token
classification (NER-style, entity-level scores) and causal-LM instruction tuning (SFT).

The flow (tokenizer -> data -> model -> plan -> run directory -> train -> evaluate -> report) is shared with
`llmkit adapter` and lives in llmkit/tasks/finetuning.py; the task strategies in llmkit/tasks/strategies.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.config.sections import opt
from llmkit.smoke import honoured
from llmkit.tasks import SMOKE, TaskTrainingConfig, fine_tune

COMMAND = "finetune"


@dataclass
class FinetuneConfig(TaskTrainingConfig):
    """`llmkit finetune` config."""

    command = COMMAND
    output_dir: str | None = opt("Run directory (default: runs/finetune-<config name>-<time>).", default=None)


@honoured(COMMAND, SMOKE)
def run(cfg: FinetuneConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Fine-tune and evaluate; return the final metrics (also written to OUTPUT_DIR/metrics.json)."""
    return fine_tune(cfg, COMMAND, config_path=config_path, overwrite=overwrite, dry_run=dry_run)
