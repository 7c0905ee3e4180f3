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


def defaults_table() -> dict[tuple[str, str], tuple[str, str]]:
    """docs/models-and-training.md's table of defaults: (group, setting) -> (default, source)."""
    text = (REPO_ROOT / "docs" / "models-and-training.md").read_text()
    section = text.split("## Defaults and their sources", 1)[1].split("\n## ", 1)[0]
    rows, group = {}, None
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) != 3 or cells[0] in ("setting", "---"):
            continue
        if cells[0].startswith("**"):
            group = cells[0].split("**")[1]
        else:
            rows[(group, cells[0])] = (cells[1], cells[2])
    return rows


def test_the_table_of_defaults_states_the_defaults_the_code_uses():
    import inspect

    from model_core.augmentation import Augmentation
    from model_core.presets import preset_config
    from model_core.training import train_diffusion, train_fusion

    table = defaults_table()
    assert all(default and source for default, source in table.values())
    stage2 = {name: p.default for name, p in inspect.signature(train_diffusion).parameters.items()}
    stage1 = {name: p.default for name, p in inspect.signature(train_fusion).parameters.items()}
    s2, s1 = "Stage 2 training", "Stage 1 training"
    assert table[(s2, "batch, accumulation")][0].startswith(
        f"{stage2['batch_size']} pairs, {stage2['gradient_accumulation']} micro-batches"
    )
    assert table[(s2, "length")][0].startswith(f"{stage2['epochs']} epochs")
    assert float(table[(s2, "optimiser, learning rate")][0].removeprefix("AdamW, ")) == stage2["learning_rate"]
    assert table[(s2, "weight decay")][0] == f"{stage2['weight_decay']:g}" and stage2["max_grad_norm"] is None
    assert f"first {stage2['warmup_fraction']:.0%} of the steps" in table[(s2, "warm-up")][0]
    assert table[(s2, "decay")][0] == f"x{stage2['lr_decay_factor']:g} from {stage2['lr_decay_at']:.0%} of the steps"
    assert table[(s2, "offset noise")][0] == f"{stage2['noise_offset']:g}"
    assert table[(s2, "condition dropout")][0].startswith(f"{stage2['condition_dropout']:g}")
    assert table[(s2, "condition dropout draw")][0].startswith("one per sample") and not stage2["condition_dropout_per_batch"]
    assert table[(s2, "stage-1 Combiner dropout")][0].startswith("active") and stage2["fusion_dropout"]
    augmentation = Augmentation()
    assert table[(s2, "keypoint jitter")][0].startswith(f"Gaussian, sigma 1/{round(1 / augmentation.keypoint_jitter)}")
    assert table[(s2, "horizontal flip")][0].startswith(f"{augmentation.flip:.0%}")
    assert table[(s2, "source = target")][0].startswith(f"{augmentation.source_as_target:.0%}")
    assert table[(s2, "low-resolution source")][0].startswith(f"{augmentation.low_resolution_source:.0%}")
    production = preset_config("fpdm-sd21")
    assert table[(s2, "source projector dropout")][0] == f"{production['source_projector']['dropout']:g}"
    assert table[(s1, "length")][0] == f"{stage1['epochs']} epochs" and table[(s1, "batch")][0] == f"{stage1['batch_size']}"
    lr, decay = re.match(r"AdamW, lr ([\d.e-]+), weight decay ([\d.e-]+),", table[(s1, "optimiser")][0]).groups()
    assert (float(lr), float(decay)) == (stage1["learning_rate"], stage1["weight_decay"])

    sampling = "Sampling"
    assert production["scheduler"]["_class_name"] in table[(sampling, "sampler")][0]
    assert table[(sampling, "steps")][0] == "20" and table[(sampling, "guidance scale")][0] == "2.0"
