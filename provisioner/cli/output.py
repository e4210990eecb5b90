"""Printing: rich tables for people, `--json` for scripts."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

# Off a terminal (CI logs, `make demo | less`) rich would assume 80 columns and cut table cells.
_WIDTH = None if sys.stdout.isatty() else 140
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 140)  # progress: keeps stdout clean for --json


def json_option(f):
    """Add `--json` to a command; the command returns data and a function rendering it for people."""

    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
    @functools.wraps(f)
    def wrapper(*args, as_json: bool = False, **kwargs):
        result = f(*args, **kwargs)
        if result is None:
            return None
        data, render, code = (result + (0,))[:3] if isinstance(result, tuple) else (result, None, 0)
        if as_json or render is None:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            render(data)
        if code:
            raise click.exceptions.Exit(code)
        return None

    return wrapper


def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[("" if v is None else str(v)) for v in r])
    console.print(t)
