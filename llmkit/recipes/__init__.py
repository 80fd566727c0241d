"""Recipes: one module per command, each a Config class and run(cfg) -> metrics."""
