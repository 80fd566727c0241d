"""Model and tokenizer loading: hub ids, local directories, models shipped in Python packages, from_config."""
