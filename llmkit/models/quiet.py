"""transformers' own chatter (load reports, progress bars) kept off the terminal while llmkit loads models."""

from __future__ import annotations

import contextlib
import logging


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
