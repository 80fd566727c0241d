"""`llmkit adapter`: parameter-efficient tuning of every finetune task — any PEFT method by name (its options
passed through and checked against the method's own config class), or llmkit's bottleneck adapters.

The run is finetune's (same data, task, metrics and report) with the model wrapped by the adapter; only the
adapter and the task head are saved, in `adapter/`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from llmkit.config.sections import opt
from llmkit.errors import ConfigIssue
from llmkit.recipes.finetune import FinetuneConfig
from llmkit.smoke import honoured

COMMAND = "adapter"


@dataclass
class AdapterSection:
    """The adapter: a PEFT method with its options (any field of the method's PEFT config), or bottleneck."""

    open_passthrough = True  # the valid keys depend on `method`; validate() checks them

    method: str = opt("lora, ia3, loha, lokr, adalora, vera, prompt_tuning, ... (any PEFT method), or bottleneck "
                      "(Houlsby / Pfeiffer adapters). Other keys of this section are the method's options, e.g. "
                      "r, lora_alpha, lora_dropout, target_modules for lora.", default="lora")
    name: str = opt("The adapter's name (PEFT adapter name), used when several adapters share a base.",
                    default="default")
    placement: Literal["houlsby", "pfeiffer"] | None = opt(
        "bottleneck: houlsby (after the attention and the feed-forward sublayers) or pfeiffer (after the "
        "feed-forward only; default).", default=None)
    reduction_factor: int | None = opt("bottleneck: hidden size / bottleneck width (default 16).", default=None)
    activation: str | None = opt("bottleneck: the non-linearity, e.g. relu (default), gelu, silu, tanh.",
                                 default=None)
    passthrough: dict[str, Any] = field(default_factory=dict, repr=False)

    def validate(self) -> list[ConfigIssue]:
        from llmkit.models.adapters import BOTTLENECK, BOTTLENECK_OPTIONS, method_names, method_options

        methods = method_names()
        if self.method not in methods:
            close = difflib.get_close_matches(self.method, methods, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return [ConfigIssue("method", f"unknown method {self.method!r}.{hint} Choose one of: "
                                          f"{', '.join(methods)}.")]
        if self.method == BOTTLENECK:
            issues = [ConfigIssue(key, f"{key} is not an option of bottleneck adapters; they take "
                                       f"{', '.join(BOTTLENECK_OPTIONS)}.") for key in self.passthrough]
            if self.reduction_factor is not None and self.reduction_factor < 1:
                issues.append(ConfigIssue("reduction_factor", f"must be >= 1, got {self.reduction_factor}."))
            if self.activation is not None:
                from transformers.activations import ACT2FN

                if self.activation not in ACT2FN:
                    issues.append(ConfigIssue("activation", f"unknown activation {self.activation!r}; choose one "
                                                            f"of: {', '.join(sorted(ACT2FN))}."))
            return issues
        issues = [ConfigIssue(key, f"only applies to method: bottleneck, not {self.method}.")
                  for key in BOTTLENECK_OPTIONS if getattr(self, key) is not None]
        return issues + self._check_peft_options(method_options(self.method))

    def _check_peft_options(self, options: dict[str, Any]) -> list[ConfigIssue]:
        """Each option must be a field of the method's PEFT config, of its type."""
        from llmkit.config.schema import _Mismatch, coerce, describe_type

        issues = []
        for key, value in list(self.passthrough.items()):
            if key not in options:
                close = difflib.get_close_matches(key, list(options), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                issues.append(ConfigIssue(key, f"{self.method} has no option {key!r}.{hint} Its options: "
                                               f"{', '.join(sorted(options))}."))
                continue
            try:
                self.passthrough[key] = coerce(value, options[key], key, issues, {})
            except _Mismatch:
                issues.append(ConfigIssue(key, f"expected {describe_type(options[key])}, got {value!r}."))
                continue
            issues += _check_option_range(key, self.passthrough[key])
        return issues

    def bottleneck_settings(self):
        from llmkit.models.bottleneck import BottleneckSettings

        given = {k: getattr(self, k) for k in ("placement", "reduction_factor", "activation")
                 if getattr(self, k) is not None}
        return BottleneckSettings(**given)


def _check_option_range(key: str, value: Any) -> list[ConfigIssue]:
    """Ranges PEFT (or torch's Dropout) only enforce when the adapter is attached, in messages that may not name
    the option: a rank must be positive, a dropout (lora_dropout, module_dropout, ...) a probability."""
    if key == "r" and isinstance(value, int) and value < 1:
        return [ConfigIssue(key, f"must be >= 1, got {value}.")]
    if key.endswith("dropout") and isinstance(value, (int, float)) and not 0 <= value <= 1:
        return [ConfigIssue(key, f"must be between 0 and 1 (a probability), got {value}.")]
    return []


@dataclass
class AdapterConfig(FinetuneConfig):
    """`llmkit adapter` config: a finetune config plus the adapter section."""

    adapter: AdapterSection = opt("The adapter to train (the base model stays frozen).",
                                  default_factory=AdapterSection)
    output_dir: str | None = opt("Run directory (default: runs/adapter-<config name>-<time>).", default=None)

    def validate(self) -> list[ConfigIssue]:
        from llmkit.models.adapters import task_refusal

        issues = super().validate()
        if self.model.from_config is not None:
            issues.append(ConfigIssue("model.from_config", "an adapter needs a pretrained base model to adapt; set "
                                                           "model.name_or_path (train from scratch with llmkit "
                                                           "pretrain)."))
        for key in ("freeze_embeddings", "freeze_layers"):
            if getattr(self.model, key):
                issues.append(ConfigIssue(f"model.{key}", "the base model is frozen already with an adapter; "
                                                          "remove this key."))
        refusal = task_refusal(self.adapter.method, self.task.type)
        if refusal:
            issues.append(ConfigIssue("adapter.method", refusal))
        return issues


@honoured("adapter")
def run(cfg: AdapterConfig, *, config_path: str | None = None, overwrite: bool | str = False,
        dry_run: bool = False) -> dict:
    """Train the adapter on the finetune task; save it (with the task head) in OUTPUT_DIR/adapter."""
    from llmkit.recipes import finetune

    return finetune.run(cfg, config_path=config_path, overwrite=overwrite, dry_run=dry_run, command=COMMAND)


def describe(model: Any, spec: AdapterSection) -> str:
    """One line on what the adapter changes, e.g. `lora r=8 on query, value; trains classifier too`."""
    if spec.method == "bottleneck":
        settings = model._bottleneck_settings
        sites = len(model.bottleneck_adapters)
        heads = getattr(model, "_bottleneck_trainable_modules", [])
        return (f"bottleneck ({settings.placement}, reduction {settings.reduction_factor}, {settings.activation}) at "
                f"{sites} sites" + (f"; trains {', '.join(heads)} too" if heads else ""))
    config = model.peft_config[spec.name]
    targets = getattr(config, "target_modules", None)
    shown = ", ".join(sorted(targets)) if isinstance(targets, (set, list)) else targets
    options = {k: v for k, v in spec.passthrough.items() if k not in ("target_modules", "modules_to_save")}
    detail = " ".join(f"{k}={v}" for k, v in options.items())
    names = [name for name, _ in model.named_modules()]
    heads = sorted(h for h in set(config.modules_to_save or [])  # PEFT lists classifier and score for every model
                   if any(n == h or n.endswith("." + h) for n in names))
    return (f"{spec.method}{' ' + detail if detail else ''}" + (f" on {shown}" if shown else "")
            + (f"; trains {', '.join(heads)} too" if heads else ""))

