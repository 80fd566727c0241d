"""A throw-away command, registered only by tests/commands/test_new_command.py: what adding a command takes
(docs/CONTRIBUTING.md). `llmkit toy CONFIG` counts the tokens of the training data with the model's tokenizer
and the model's parameters, in a run directory of its own."""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.config.sections import DataConfig, ModelConfig, TokenizerConfig, TrainConfig, opt
from llmkit.errors import ConfigIssue
from llmkit.smoke import SmokeSpec, honoured

COMMAND = "toy"


@dataclass
class ToySection:
    """What the toy command does."""

    factor: int = opt("Multiply the token count by this.", default=1)

    def validate(self) -> list[ConfigIssue]:
        return [ConfigIssue("factor", f"must be >= 1, got {self.factor}.")] if self.factor < 1 else []


@dataclass
class ToyConfig:
    """`llmkit toy` config."""

    model: ModelConfig = opt("The model whose tokenizer counts.")
    data: DataConfig = opt("The data to count.")
    toy: ToySection = opt("The toy settings.", default_factory=ToySection)
    train: TrainConfig = opt("Seed and run settings.", default_factory=TrainConfig)
    output_dir: str | None = opt("Run directory (default: runs/toy-<config name>-<time>).", default=None)


SMOKE = SmokeSpec()  # nothing beyond the generic: its model becomes a tiny copy, its data is cut


@honoured(COMMAND, SMOKE)
def run(cfg: ToyConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    from llmkit.data.loading import load_raw_splits
    from llmkit.models.loading import count_parameters, load_model, load_tokenizer
    from llmkit.training import rundir
    from llmkit.training.lifecycle import RunLifecycle

    run = RunLifecycle(cfg, COMMAND, config_path=config_path, overwrite=overwrite)
    tokenizer = load_tokenizer(cfg.model, TokenizerConfig())
    texts = load_raw_splits(cfg.data, cfg.train.seed)["train"][cfg.data.text_column]
    model, _ = load_model("AutoModel", cfg.model, tokenizer)
    metrics = {"rows": len(texts), "tokens": cfg.toy.factor * sum(len(tokenizer(t)["input_ids"]) for t in texts),
               "parameters": count_parameters(model)[1]}
    run.print(f"toy: {metrics}")
    if dry_run:
        return {"dry_run": True, **metrics}
    run_dir = run.claim()
    run.write_run_files()
    rundir.write_json(run_dir / "metrics.json", metrics)
    return metrics
