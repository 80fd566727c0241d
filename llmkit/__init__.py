"""llmkit: train and evaluate language models on the Hugging Face stack, driven by YAML configs."""

__version__ = "0.1.0"


def load_model(reference: str, adapters: list[str] | tuple[str, ...] = ()):
    """(model, tokenizer) from an llmkit run directory (full fine-tuning or adapter), an adapter folder, a model
    directory or a hub id, in eval mode. `adapters`: more adapter runs trained on the same base and task, loaded
    onto the same model under their adapter names; switch with `model.set_adapter(name)`."""
    from llmkit.models.adapters import load_reference

    return load_reference(reference, adapters)
