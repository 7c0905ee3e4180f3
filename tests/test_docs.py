"""The documents a newcomer reads: the README stays a front door, and every relative link in the
README, docs/ and the other READMEs reaches a file (and a heading, for a #anchor) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [
    REPO_ROOT / "README.md",
    *sorted((REPO_ROOT / "docs").glob("*.md")),
    REPO_ROOT / "manifests" / "README.md",
    REPO_ROOT / "model_core" / "trained" / "demo" / "README.md",
]
README_MAX_LINES = 200


def github_anchors(path: Path) -> set[str]:
    """The #anchors GitHub gives a Markdown file's headings: lowercased, punctuation dropped,
    spaces to '-', repeats numbered."""
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links in code blocks are not links
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://|mailto:", target)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_reaches_an_existing_file_and_heading(document):
    broken = []
    for target in relative_links(document):
        path, _, anchor = target.partition("#")
        destination = (document.parent / path).resolve() if path else document
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (destination.suffix != ".md" or anchor not in github_anchors(destination)):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{document.relative_to(REPO_ROOT)}: {broken}"


def test_the_readme_is_a_front_door_that_links_to_the_docs():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = {target.partition("#")[0] for target in relative_links(REPO_ROOT / "README.md")}
    for document in sorted((REPO_ROOT / "docs").glob("*.md")):
        assert f"docs/{document.name}" in linked, f"README.md does not link to docs/{document.name}"
