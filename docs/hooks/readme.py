"""MkDocs hooks: the site's home page is the repository's README.md, and the figures under
benchmarks/results/ that the docs show are published with the site.

In the README, links into docs/ are made relative to the site and links to other files of the repository
(which the site does not hold) become inline code, so the strict build checks every link that remains.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)")
FIGURES = "benchmarks/results"


def _relink(match: re.Match) -> str:
    text, target = match.group(1), match.group(2)
    if target.startswith("docs/"):
        return f"[{text}]({target[len('docs/'):]})"
    return text if text.startswith("`") else f"`{text}`"


def on_files(files, config):
    for path in sorted((ROOT / FIGURES).rglob("*.png")):
        files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri == "index.md":
        markdown = LINK.sub(_relink, (ROOT / "README.md").read_text(encoding="utf-8"))
    return markdown.replace(f"](../{FIGURES}/", f"]({FIGURES}/")
