"""Metric scripts shipped with llmkit (loaded offline through `evaluate`) and helpers built on them."""
