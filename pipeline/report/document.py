"""The blocks a report is made of, and their two renderings: Markdown with
relative image links, and one self-contained HTML page with the images
inlined, which a browser opens as is."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from pipeline.format import markdown_table


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report's folder
    caption: str


Block = Heading | Paragraph | Table | Image


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Table):
            out.append(markdown_table(block.header, block.rows))
        else:
            out.append(f"![{block.caption}]({block.path})")
    return "\n\n".join(out) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;
padding:.3em .6em;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}
img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}"""


def render_html(blocks: list[Block], folder: Path) -> str:
    """One self-contained page: images inlined as data URIs, styles inline."""
    title = next(b.text for b in blocks if isinstance(b, Heading))
    out = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
    ]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode((folder / block.path).read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(block.caption)}" '
                f'src="data:image/png;base64,{data}"><figcaption>'
                f"{html.escape(block.caption)}</figcaption></figure>"
            )
    out.append("</body></html>\n")
    return "\n".join(out)
