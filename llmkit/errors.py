"""User-facing errors: a clear message and exit code 2, never a traceback (unless --debug)."""

from __future__ import annotations

EXIT_USER_ERROR = 2
SHOWN_LIMIT = 200  # characters of a user's value a message echoes: a 10 MB string must not make a 10 MB error
MAX_SHOWN_ISSUES = 50  # problems one ConfigError lists; a config with thousands of bad keys gets a count for the rest
MAX_ISSUE_CHARS = 1000  # one listed problem, cut beyond this: a safety net for a message that echoes a value whole


def shown(value: object, limit: int = SHOWN_LIMIT) -> str:
    """`repr(value)` for a message, cut after `limit` characters with the full size, e.g. "'aaaa... (10,485,760
    characters)" or "[0, 1, 2, ... (1,000,000 items)". Only the start of a large value is ever rendered."""
    text = _repr_start(value, limit + 1)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        size = f"{len(value):,} characters"
    elif isinstance(value, (list, dict)):
        noun = "item" if isinstance(value, list) else "key"
        size = f"{len(value):,} {noun}{'s' if len(value) != 1 else ''}"
    else:
        size = f"{len(text):,} characters"
    return f"{text[:limit]}... ({size})"


def _repr_start(value: object, budget: int) -> str:
    """`repr(value)`, or a start of it at least `budget` characters long: a list or mapping stops at the item
    that fills the budget, so a million items (or a list that holds itself) cost no more than a few."""
    if isinstance(value, str):
        return repr(value) if len(value) <= budget else repr(value[:budget])[:-1]
    if isinstance(value, (list, dict)):
        text, closing = ("[", "]") if isinstance(value, list) else ("{", "}")
        for i, item in enumerate(value.items() if isinstance(value, dict) else value):
            if len(text) >= budget:
                return text
            text += ", " if i else ""
            if isinstance(value, dict):
                text += _repr_start(item[0], budget - len(text)) + ": "
                item = item[1]
            text += _repr_start(item, budget - len(text))
        return text + closing
    try:
        return repr(value)
    except ValueError:  # Python refuses to write an int of more than 4,300 digits
        if isinstance(value, int):
            return f"<an integer of {value.bit_length():,} bits>"
        raise


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
        count = f"{len(issues):,} problem{'s' if len(issues) != 1 else ''}"
        lines = [f"Invalid config{where} ({count}):"]
        for issue in issues[:MAX_SHOWN_ISSUES]:
            text = str(issue)
            cut = f"{text[:MAX_ISSUE_CHARS]}... ({len(text):,} characters)" if len(text) > MAX_ISSUE_CHARS else text
            lines.append(f"  - {cut}")
        if len(issues) > MAX_SHOWN_ISSUES:
            lines.append(f"  ... and {len(issues) - MAX_SHOWN_ISSUES:,} more.")
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


# Longest first: the UTF-32 little-endian mark starts with the UTF-16 one.
UTF16_32_MARKS = [(b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
                  (b"\xfe\xff", "UTF-16")]


def not_utf8_message(path) -> str | None:
    """'PATH is not UTF-8 ...' with the offending byte, its line and the fix; None for a UTF-8 file (with or without
    a UTF-8 byte-order mark). A UTF-16/32 file (Windows editors and PowerShell write them) is named as such."""
    found = first_non_utf8(path)
    if found is None:
        return None
    with open(path, "rb") as fh:
        start = fh.read(4)
    for mark, encoding in UTF16_32_MARKS:
        if start.startswith(mark):
            return (f"{path} is {encoding} (it starts with a byte-order mark); save it as UTF-8, e.g. iconv -f "
                    f"{encoding.lower()} -t utf-8.")
    line, byte = found
    return (f"{path} is not UTF-8: byte 0x{byte:02x} on line {line} cannot be decoded (a Latin-1/Windows-1252 "
            "file, or not a text file at all). Open it in an editor and save it as UTF-8, e.g. iconv -f latin1 "
            "-t utf-8.")
