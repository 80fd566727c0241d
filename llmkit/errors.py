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


def first_non_utf8(path) -> tuple[int, int] | None:
    """`(line, byte)` of the first byte of a file that is not valid UTF-8, or None when it all decodes.

    Read in chunks so a large corpus is never held twice in memory; a character split across two chunks is
    carried over rather than reported.
    """
    import codecs

    line, pending = 1, b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            data = pending + chunk
            try:
                _, used = codecs.utf_8_decode(data, "strict", not chunk)
            except UnicodeDecodeError as e:
                return line + data.count(b"\n", 0, e.start), data[e.start]
            line += data.count(b"\n", 0, used)
            pending = data[used:]
            if not chunk:
                return None


def not_utf8_message(path) -> str | None:
    """'PATH is not UTF-8 ...' with the offending byte, its line and the fix; None for a UTF-8 file."""
    found = first_non_utf8(path)
    if found is None:
        return None
    line, byte = found
    return (f"{path} is not UTF-8: byte 0x{byte:02x} on line {line} cannot be decoded (a Latin-1/Windows-1252 "
            "file, or not a text file at all). Open it in an editor and save it as UTF-8, e.g. iconv -f latin1 "
            "-t utf-8.")
