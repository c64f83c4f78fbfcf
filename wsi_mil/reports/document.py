"""``report.md`` and a self-contained ``report.html`` from figures and a results table.

The markdown links the PNG files next to it; the HTML embeds them as base64
data URIs and holds the results table as an HTML table, so it can be mailed
or archived as a single file.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from wsi_mil.io.atomic import write_text_atomic
from wsi_mil.reports.figures import png_data_uri

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; font-size: .9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
.skipped { color: #8a5a00; font-size: .9em; }
"""


@dataclass
class ReportFigure:
    """A PNG in the report folder, with a title and a caption."""

    title: str
    path: Path
    caption: str = ""


@dataclass
class ReportSection:
    title: str
    text: str = ""
    figures: list[ReportFigure] = field(default_factory=list)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (no ``tabulate`` needed)."""
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def render_markdown(title: str, sections: Sequence[ReportSection], results: pd.DataFrame | None,
                    skipped: Sequence[str], folder: Path) -> str:
    parts = [f"# {title}", ""]
    if results is not None and not results.empty:
        parts += ["## Results", "", markdown_table(results), ""]
    for section in sections:
        parts += [f"## {section.title}", ""]
        if section.text:
            parts += [section.text, ""]
        for fig in section.figures:
            rel = Path(fig.path).resolve().relative_to(folder.resolve()).as_posix()
            parts += [f"### {fig.title}", "", f"![{fig.title}]({rel})", ""]
            if fig.caption:
                parts += [fig.caption, ""]
    if skipped:
        parts += ["## Not made", ""] + [f"- {reason}" for reason in skipped] + [""]
    return "\n".join(parts)


def render_html(title: str, sections: Sequence[ReportSection], results: pd.DataFrame | None,
                skipped: Sequence[str]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    if results is not None and not results.empty:
        table = results.to_html(index=False, border=0, na_rep="",
                                float_format=lambda v: f"{v:.4g}", escape=True)
        body += ["<h2>Results</h2>", table]
    for section in sections:
        body.append(f"<h2>{esc(section.title)}</h2>")
        if section.text:
            body.append(f"<p>{esc(section.text)}</p>")
        for fig in section.figures:
            caption = f"<figcaption>{esc(fig.caption)}</figcaption>" if fig.caption else ""
            body.append(
                f'<figure><h3>{esc(fig.title)}</h3>'
                f'<img alt="{esc(fig.title)}" src="{png_data_uri(fig.path)}"/>{caption}</figure>'
            )
    if skipped:
        items = "".join(f"<li>{esc(reason)}</li>" for reason in skipped)
        body += ["<h2>Not made</h2>", f'<ul class="skipped">{items}</ul>']
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


def write_report_documents(folder: str | Path, title: str, sections: Sequence[ReportSection],
                           results: pd.DataFrame | None = None,
                           skipped: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``folder`` (atomically)."""
    folder = Path(folder)
    md_path, html_path = folder / "report.md", folder / "report.html"
    write_text_atomic(md_path, render_markdown(title, sections, results, skipped, folder))
    write_text_atomic(html_path, render_html(title, sections, results, skipped))
    return md_path, html_path
