"""One look for every HTML report (evaluation, interpretability): a self-contained page, no
external resources, readable in any browser and printable."""

from __future__ import annotations

import html

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; color: #2b2a33;
       background: #f6f3ee; max-width: 66em; margin: 2em auto; padding: 0 1.5em; line-height: 1.5; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 2px solid #e6e0d6;
  padding-bottom: .2em; } h3 { margin-top: 1.5em; color: #4a4656; }
p.lead { color: #5a5668; } p.finding { background: #fffdf9; border-left: 4px solid #6c4ee3; padding: .6em 1em;
  border-radius: 6px; }
table { border-collapse: collapse; margin: 1em 0; font-size: .92em; background: #fffdf9; }
td, th { border: 1px solid #e6e0d6; padding: .3em .6em; text-align: left; } th { background: #efe9ff; }
img { max-width: 100%; display: block; margin: 1em 0; border-radius: 8px; background: #fff; }
figure { margin: 1.2em 0; } figcaption { color: #5a5668; font-size: .92em; }
code, .ctx { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; }
.ctx { white-space: pre-wrap; } .focus { font-weight: bold; text-decoration: underline; }
.text { font-style: italic; background: #fffdf9; padding: .6em 1em; border-radius: 6px; }
small { color: #7a7687; }
"""


def page(title: str, body: str) -> str:
    """A whole HTML document around `body` (already HTML), titled `title` (plain text)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
