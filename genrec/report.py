"""Small self-contained HTML reports: headings, key figures, tables and embedded PNG plots."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from genrec.io import write_text  # noqa: E402

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.9rem}img{max-width:100%;border:1px solid #eee}
"""


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class HtmlReport:
    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> HtmlReport:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def note(self, text: str) -> HtmlReport:
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")
        return self

    def figures(self, values: dict[str, Any]) -> HtmlReport:
        return self.table(["figure", "value"], [[k, _fmt(v)] for k, v in values.items()])

    def table(self, header: list[str], rows: list[list[Any]]) -> HtmlReport:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
        )
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")
        return self

    def links(self, targets: dict[str, str]) -> HtmlReport:
        items = "".join(f"<li><a href='{html.escape(path, quote=True)}'>{html.escape(name)}</a></li>"
                        for name, path in targets.items())
        self.parts.append(f"<ul>{items}</ul>")
        return self

    def plot(self, fig: Figure, caption: str = "") -> HtmlReport:
        data = base64.b64encode(figure_png(fig)).decode()
        self.parts.append(f"<figure><img src='data:image/png;base64,{data}'/>"
                          f"<figcaption class='note'>{html.escape(caption)}</figcaption></figure>")
        return self

    def render(self) -> str:
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.parts) + "</body></html>")

    def save(self, path: str) -> None:
        write_text(self.render(), path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
