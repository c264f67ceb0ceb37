r"""CSV cells a spreadsheet will not run: the one helper every CSV writer of the project calls.

A CSV export is opened in Excel, LibreOffice or Google Sheets, which read a cell
that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (``=HYPERLINK(...)``,
``=cmd|' /C calc'!A0``, ``@SUM(...)``), and a leading tab or carriage return
can hide one. Our text cells hold what producers and analysts wrote (merchant
ids, rule ids, reason texts), so such a cell is an injection. OWASP "CSV
Injection" guidance: prefix the cell with a single quote, which every
spreadsheet shows as text and never evaluates. Numbers are left alone: numeric
columns are not touched, and a text cell that is a plain number (``-12.5``,
``+3``, ``1e-3``) cannot be a formula, so it keeps its value.

Trade-off: a neutralised cell reads back with its quote (``'=x``); the CSV forms
are for people, and Parquet (the default of every writer) round-trips exactly.

Used by: ``training.history.write_history`` (``just history``, ``just simulate``),
``training.score_file.write_verdicts`` (``just score-file``) and
``rules.backtest.write_report`` (``rules.csv``).

>>> neutralise('=HYPERLINK("http://x")'), neutralise("-12.5"), neutralise("m-1"), neutralise(3)
('\'=HYPERLINK("http://x")', '-12.5', 'm-1', 3)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

#: First characters a spreadsheet reads as the start of a formula (OWASP CSV Injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is text a spreadsheet would evaluate; else as is.

    Only ``str`` values change; a plain number written as text (``"-3"``) does not.
    """
    if (isinstance(value, str) and value.startswith(FORMULA_STARTS)
            and not _PLAIN_NUMBER.fullmatch(value)):
        return "'" + value
    return value


def neutralise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A ``csv.DictWriter`` row with every cell passed through :func:`neutralise`."""
    return {k: neutralise(v) for k, v in row.items()}


def neutralise_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text columns (object or string dtype) are neutralised.

    Numeric, boolean and datetime columns are returned unchanged (they cannot hold a
    formula). Column names are neutralised too (a header is a cell).
    """
    import pandas as pd

    out = frame.copy()
    for column in out.columns:
        dtype = out[column].dtype
        if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
            out[column] = out[column].map(neutralise)
    out.columns = [neutralise(c) for c in out.columns]
    return out
