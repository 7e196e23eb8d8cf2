"""What every command shares: one red error line and exit code 2, rich tables."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def fail(msg: str) -> None:
    """One line on stderr, exit code 2: how every user error ends."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def table(title: str, *columns: str) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    return t


def show(t: Table) -> None:
    Console().print(t)
