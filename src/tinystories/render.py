"""A report as a list of blocks (heading, paragraph, table, image), rendered to Markdown and to a
self-contained HTML page, so that the two files always say the same thing.

Shared ground: the evaluation report is made of blocks, and every HTML report (evaluation,
interpretability) embeds its images the same way (`img_tag`).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tinystories.html import page


@dataclass(frozen=True)
class Block:
    kind: str  # "h1" | "h2" | "p" | "table" | "img"
    text: str = ""  # the heading's or paragraph's text, or the image's caption
    rows: tuple[tuple[str, ...], ...] | None = None  # table: the first row is the header
    png: bytes = b""


def table(rows: Sequence[Sequence[str]]) -> Block:
    """A table block; the first row is the header."""
    return Block("table", rows=tuple(tuple(row) for row in rows))


def img_tag(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded (base64), so the page needs no other file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def to_markdown(blocks: Sequence[Block], plot_names: Mapping[bytes, str]) -> str:
    """Markdown; images link to `plots/NAME` (`plot_names`: PNG -> its file name)."""
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(("# " if b.kind == "h1" else "## ") + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "table" and b.rows:
            cells = [[c.replace("|", "\\|") for c in row] for row in b.rows]
            out.append("\n".join(["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0]),
                                  *("| " + " | ".join(r) + " |" for r in cells[1:])]))
        elif b.kind == "img":
            out.append(f"![{b.text}](plots/{plot_names[b.png]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained HTML page (`html.page`), images embedded."""
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "p"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "table" and b.rows:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b.rows[0])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b.rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "img":
            body.append(img_tag(b.png, b.text))
    return page(title, "\n".join(body))
