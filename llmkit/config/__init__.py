"""Typed configs: YAML + dotted overrides, strict validation, resolved-config saving."""

from llmkit.config.loader import apply_overrides, dump_config, load_config, read_yaml, save_config

__all__ = ["apply_overrides", "dump_config", "load_config", "read_yaml", "save_config"]
