"""User-facing errors: a clear message and exit code 2, never a traceback (unless --debug)."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input (config, data, paths). Printed without a traceback, exit code 2."""

    exit_code = EXIT_USER_ERROR


class ConfigIssue:
    """One problem with one config key: the key, what is wrong, and how to fix it."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message

    def __repr__(self) -> str:
        return f"ConfigIssue({self.key!r}, {self.message!r})"


class ConfigError(UserError):
    """Every problem found in a config, reported together."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None):
        self.issues = issues
        self.source = source
        where = f" in {source}" if source else ""
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        lines = [f"Invalid config{where} ({count}):"] + [f"  - {issue}" for issue in issues]
        super().__init__("\n".join(lines))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, ending with a full stop (for one-paragraph user errors)."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__).rstrip(".") + "."
