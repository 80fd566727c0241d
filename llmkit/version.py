"""llmkit's version (a module of its own, so that the lowest layers can name it without importing the package's
public helpers)."""

__version__ = "0.1.0"
