"""Data: loading, label handling, tokenization and the on-disk cache."""
