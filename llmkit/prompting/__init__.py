"""Prompt-based learning: cloze templates, verbalizers, their scoring and few-shot sampling."""
