"""Small HTML pieces the report's sections are made of (see :mod:`selfsup.report.sections`): escaped text,
tables, embedded PNG figures and titled sections."""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path


def escape(x) -> str:
    """``x`` as text safe inside HTML."""
    return html.escape(str(x))


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(data: bytes, caption: str) -> str:
    """A PNG, embedded, with its caption."""
    return (f"<figure><img src=\"{png_data_uri(data)}\" alt=\"{escape(caption)}\">"
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def file_figure(run_dir: Path, name: str, caption: str | None = None) -> str:
    """The run directory's PNG ``name`` as a figure; empty when there is no such file."""
    p = Path(run_dir) / name
    return figure(p.read_bytes(), caption or name) if p.is_file() else ""


def grid(figures: list[str]) -> str:
    """Small figures side by side (as many per row as fit)."""
    figures = [f for f in figures if f]
    return f"<div class=\"figs\">{''.join(figures)}</div>" if figures else ""


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def attribute(name: str, value: str) -> str:
    """`` name="value"`` (escaped), nothing for an empty value."""
    return f' {name}="{escape(value)}"' if value else ""


def _numeric(cell: str) -> bool:
    """Numbers (and the "–" of a missing one) are right-aligned, words left-aligned."""
    return bool(re.match(r"^[-+−–]?\d|^[–—]?$", cell.strip()))


def table(header: list[str], rows: list[list[str]], cls: str = "", row_classes: list[str] | None = None) -> str:
    """A table of text cells: numbers right-aligned, words left-aligned; ``row_classes``: one class per row."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(f"<tr{attribute('class', row_classes[i] if row_classes else '')}>"
                   + "".join(f"<td{attribute('class', '' if _numeric(c) else 'text')}>{escape(c)}</td>" for c in r)
                   + "</tr>" for i, r in enumerate(rows))
    return f"<table{attribute('class', cls)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def join_parts(*parts: str) -> str:
    """The non-empty ``parts``, one a line: a section's body."""
    return "\n".join(p for p in parts if p)


def section(title: str, *parts: str, sid: str = "") -> str:
    """A titled section of the non-empty ``parts``; empty when there are none."""
    body = join_parts(*parts)
    if not body:
        return ""
    return f"<section{attribute('id', sid)}><h2>{escape(title)}</h2>\n" + body + "\n</section>"
