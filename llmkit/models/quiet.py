"""transformers' own chatter (load reports, progress bars) kept off the terminal while llmkit loads models."""

from __future__ import annotations

import contextlib


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
