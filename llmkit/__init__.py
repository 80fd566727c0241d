"""llmkit: train and evaluate language models on the Hugging Face stack, driven by YAML configs.

`import llmkit` stays light: load_model imports the model code (torch, transformers) when it is called.
"""

from llmkit.models.quiet import silence_library_warnings, silence_torchao_import
from llmkit.version import __version__

silence_torchao_import()  # transformers and peft import torchao when it is installed; its CPU chatter is noise
silence_library_warnings()  # two transformers 5 deprecation notices raised from peft's calls, not llmkit's

__all__ = ["__version__", "load_model"]


def load_model(reference: str, adapters: list[str] | tuple[str, ...] = (), allow_pickle: bool = False):
    """(model, tokenizer) from an llmkit run directory (full fine-tuning or adapter), an adapter folder, a model
    directory or a hub id, in eval mode; for a sentence-embedding run, its sentence_transformers.SentenceTransformer
    (with the pooling it was trained with) and that model's tokenizer. `adapters`: more adapter runs trained on
    the same base and task, loaded onto the same model under their adapter names; switch with
    `model.set_adapter(name)`. Weights load from safetensors only unless `allow_pickle=True` (a torch pickle can
    run arbitrary code when loaded)."""
    from llmkit.models.adapters import load_reference

    return load_reference(reference, adapters, allow_pickle)
