"""Reading a user's CSV table into rows with their line numbers, with one clear error for the usual
problems (missing file, not UTF-8 text), so every table reader names the file and line it refuses.

    read_csv_rows(path, expected) -> [(line number, [cells stripped])...]   blank lines dropped
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from bsegn.core.errors import DataError


def read_csv_rows(path: str | Path, expected: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of CSV `path` as (1-based line number, stripped cells).

    `expected` says what the file should hold (e.g. "a CSV with header class,description"); it ends
    the error messages. A UTF-8 byte-order mark is accepted. DataError when the file is missing or is
    not UTF-8 text (the message names the line of the first bad byte and how to fix it).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected {expected}.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as "
                        "UTF-8 (in a spreadsheet: 'CSV UTF-8') and try again.") from None
    return csv_text_rows(text)


def csv_text_rows(text: str) -> list[tuple[int, list[str]]]:
    """read_csv_rows for CSV text already in memory (an upload): the same rows, the same line numbers."""
    rows = []
    reader = csv.reader(io.StringIO(text, newline=""))
    line_number = reader.line_num + 1
    for row in reader:
        cells = [cell.strip() for cell in row]
        if any(cells):
            rows.append((line_number, cells))
        line_number = reader.line_num + 1
    return rows
