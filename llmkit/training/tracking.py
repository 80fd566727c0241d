"""`train.report_to: [tensorboard]` / `[mlflow]`: the run's metrics in those tools, written inside the run directory.

transformers' own integrations log the TrainingArguments (not llmkit's config), name the run after nothing llmkit
chose, write TensorBoard files under checkpoints/, and point MLflow wherever its environment says (by default a
./mlruns store in the working directory, which MLflow 3 refuses without a database). llmkit replaces them with:

- TensorBoard: event files in RUN/tensorboard/ (every number of every log record, as transformers writes them:
  train/loss, eval/accuracy, ...), the resolved config as hyper-parameters and as text;
- MLflow: a local file store in RUN/mlruns/ (nothing is sent anywhere; an MLFLOW_TRACKING_URI set by the user
  is used instead), one MLflow run per training named after the run directory, the resolved config as its
  params (dotted keys, e.g. train.learning_rate), every number of every log record as a metric at its step.

Both write from the main process only. `tensorboard --logdir RUN` or `mlflow ui --backend-store-uri RUN/mlruns`
(with the full mlflow package; the tracking extra installs only its client) shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers.integrations import MLflowCallback, TensorBoardCallback

from llmkit.config.schema import to_dict
from llmkit.config.secrets import redact_config

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"


def config_params(cfg: Any) -> dict[str, Any]:
    """The resolved config as flat hyper-parameters: `{"train.learning_rate": 0.0001, ...}`; secrets left out,
    lists and None as text (what both tools accept)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix[:-1]] = node
        else:
            flat[prefix[:-1]] = str(node)

    data, secrets = redact_config(to_dict(cfg))
    walk(data, "")
    return {key: value for key, value in flat.items() if key not in secrets}


class TensorBoardTracking(TensorBoardCallback):
    """transformers' TensorBoard logging into RUN/tensorboard, with llmkit's config as the hyper-parameters."""

    def __init__(self, logging_dir: Path, params: dict[str, Any], config_text: str):
        super().__init__()
        self.logging_dir = str(logging_dir)
        self.params = params
        self.config_text = config_text

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        if self.tb_writer is None:
            self._init_summary_writer(args)
        self.tb_writer.add_text("config", f"```yaml\n{self.config_text}\n```")
        writer = self.tb_writer._get_file_writer()  # hparams into this run's event file, not a new sub-run
        for summary in hparams(self.params, {}):
            writer.add_summary(summary)
        self.tb_writer.flush()


class MLflowTracking(MLflowCallback):
    """transformers' MLflow logging into a file store in the run directory; run name and params from llmkit."""

    def __init__(self, store: Path, run_name: str, params: dict[str, Any]):
        super().__init__()
        self.store, self.run_name, self.params = store, run_name, params

    def setup(self, args, state, model):
        self._async_log = True  # mlflow >= 2.8 (the tracking extra asks for 3)
        if state.is_world_process_zero:
            mlflow = self._ml_flow
            uri = os.environ.get("MLFLOW_TRACKING_URI") or self.store.resolve().as_uri()
            if uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 would ask for a database
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            mlflow.set_tracking_uri(uri)
            if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
                mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
            mlflow.start_run(run_name=self.run_name)
            self._auto_end_run = True
            items = [(k, str(v)[: self._MAX_PARAM_VAL_LENGTH]) for k, v in self.params.items()]
            for i in range(0, len(items), self._MAX_PARAMS_TAGS_PER_BATCH):
                mlflow.log_params(dict(items[i: i + self._MAX_PARAMS_TAGS_PER_BATCH]), synchronous=False)
        self._initialized = True


def use_llmkit_tracking(trainer: Any, cfg: Any, command: str, run_dir: Path, top: Path) -> None:
    """Swap the TensorBoard / MLflow callbacks that train.report_to added to `trainer` for llmkit's. `top`: the
    run directory of the command, which holds the MLflow store when `run_dir` is one member of it (a sweep size,
    a prompt seed)."""
    report_to = trainer.args.report_to or []
    if not ({"tensorboard", "mlflow"} & set(report_to)):
        return
    from llmkit.config import dump_config

    params = config_params(cfg)
    inside = run_dir.resolve().is_relative_to(top.resolve()) and run_dir.resolve() != top.resolve()
    run_name = f"{top.name}/{run_dir.resolve().relative_to(top.resolve())}" if inside else run_dir.name
    if "tensorboard" in report_to:
        trainer.remove_callback(TensorBoardCallback)
        trainer.add_callback(TensorBoardTracking(run_dir / TENSORBOARD_DIR, params, dump_config(cfg, command)))
    if "mlflow" in report_to:
        trainer.remove_callback(MLflowCallback)
        trainer.add_callback(MLflowTracking(top / MLFLOW_DIR, run_name, params))
