"""Tables written to a pipe keep their width (rich alone would squeeze them to 80 columns)."""

from __future__ import annotations

import io

import pytest
from rich.table import Table

from devkit.cli import PIPE_WIDTH, table_console


def test_a_table_in_a_pipe_is_not_squeezed(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.delenv("COLUMNS", raising=False)
    console = table_console()
    assert console.width == PIPE_WIDTH
    table = Table()
    for name in ("rule", "expression", "action"):
        table.add_column(name)
    expression = "card_count_10m > 5 && amount_reference > 500.0 && channel == 'ecom'" * 2
    table.add_row("velocity-ecom", expression, "review")
    console.print(table)
    assert expression in out.getvalue()  # one line, not wrapped into a narrow cell


def test_width_option_and_columns_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert table_console(120).width == 120
    monkeypatch.setenv("COLUMNS", "100")
    assert table_console().width == 100
