"""transformers' own chatter (load reports, progress bars) kept off the terminal while llmkit loads models."""

from __future__ import annotations

import contextlib
import logging
import warnings


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and progress bars; llmkit prints its own summary."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# torchao's import on a CPU machine: CUDA kernels that cannot load, and torch's deprecation of the Enum types it
# registers. Harmless here; transformers and peft import torchao whenever it is installed (llmkit[compress]).
_TORCHAO_CHATTER = {"torchao": ("Failed to load",), "torchao.kernel.intmm": ("Detected no triton",),
                    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",)}


class _DropChatter(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(fragment in message for fragment in self.fragments)


def silence_torchao_import() -> None:
    """Keep torchao's import chatter (and only it) off the terminal, wherever torchao gets imported."""
    for name, fragments in _TORCHAO_CHATTER.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in log.filters):
            log.addFilter(_DropChatter(fragments))


# Deprecation notices transformers 5 raises from inside its own or peft's code (not from llmkit's calls), shown
# once per run: peft's prefix tuning passes past_key_values to BERT; peft asks is_gradient_checkpointing.
_LIBRARY_WARNINGS = ((FutureWarning, r"`past_key_values` is deprecated and will be removed"),
                     (FutureWarning, r"`is_gradient_checkpointing` is deprecated and will be removed"),
                     # sentence-transformers' in-batch negatives gathered across processes (each rank, each step)
                     (FutureWarning, r"torch\.distributed\.nn\.functional\.all_gather is deprecated"))


def silence_library_warnings() -> None:
    """Keep the library deprecation notices above (and only them) off the terminal; --debug leaves them."""
    for category, message in _LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def show_library_chatter() -> None:
    """`llmkit --debug`: take the filters of silence_torchao_import out again (installed by `import llmkit`), so
    every library message reaches the terminal."""
    for name in _TORCHAO_CHATTER:
        log = logging.getLogger(name)
        for dropper in [f for f in log.filters if isinstance(f, _DropChatter)]:
            log.removeFilter(dropper)
