"""The `adapter:` section: a PEFT method with its options (checked against the method's own PEFT config class),
or llmkit's bottleneck adapters. Used by `llmkit adapter` and by `llmkit prompt` (few-shot with an adapter,
soft prompts).

Modules that load torch or transformers are imported inside the functions that use them (docs/CONTRIBUTING.md).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from llmkit.config.schema import _Mismatch, coerce, describe_type
from llmkit.config.sections import opt
from llmkit.errors import ConfigIssue
from llmkit.models.adapters import BOTTLENECK, BOTTLENECK_OPTIONS, method_names, method_options


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
