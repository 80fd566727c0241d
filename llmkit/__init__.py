"""llmkit: train and evaluate language models on the Hugging Face stack, driven by YAML configs."""

__version__ = "0.1.0"
