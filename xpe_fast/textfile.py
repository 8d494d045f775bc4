"""A user's text files (data, language groups, config files): UTF-8 with or without the
byte-order mark that spreadsheet programs write, and a one-line error naming the file, the
line and the byte for what is not UTF-8 text (another encoding, a NUL byte, a binary file)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TextFileError

BOM = b"\xef\xbb\xbf"


def read_text(path: str | os.PathLike, error: type[Exception] = TextFileError) -> str:
    """The file's text (a leading BOM dropped); `error` (one line) if it cannot be read, is
    not UTF-8, or holds a NUL byte."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    skip = len(BOM) if data.startswith(BOM) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data.count(b"\n", 0, at) + 1
        raise error(
            f"{path}, line {line}: not UTF-8 text (byte offset {at}: 0x{data[at]:02x}); "
            "save the file as UTF-8"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise error(
            f"{path}, line {line}: a NUL byte (a binary file, or text saved as UTF-16?); "
            "save the file as UTF-8"
        )
    return text
