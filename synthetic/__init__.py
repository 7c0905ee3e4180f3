"""A synthetic fashion catalog: person-like figures in textured garments, posed from COCO-18
keypoints, with every target known. `fpdm synth` writes one; the demo model trains on it,
`fpdm eval` measures pose transfer on it, and manifests/example.csv comes from it. It depends on
model_core only, never on the catalog pipeline.

Each person wears one outfit (a top and bottoms) and is photographed in several poses on a
light catalog background. A figure is built in 3-D and drawn by a small z-buffer renderer:

    people      a person's build and looks, and the outfit they wear in all of their photos
    skeletons   poses (a family's joint angles, a view) and the 3-D skeleton they bend
    rendering   the figure drawn, its part mask, and its keypoints where the body shows them
    writers     a dataset of pairs (write_dataset) and a catalog manifest (write_catalog_manifest)

Keypoints are labelled anatomically, as COCO does: seen from the back, the person's right
shoulder is on the picture's right. Everything is deterministic: the same arguments give
byte-identical files. Only numpy and Pillow are used.
"""

from __future__ import annotations

from synthetic.rendering import DEFAULT_SIZE, MASK_CLASSES
from synthetic.writers import (
    POSES_PER_PERSON,
    CatalogExample,
    SynthResult,
    parse_size,
    render_person,
    write_catalog_manifest,
    write_dataset,
)

__all__ = [
    "DEFAULT_SIZE",
    "MASK_CLASSES",
    "POSES_PER_PERSON",
    "CatalogExample",
    "SynthResult",
    "parse_size",
    "render_person",
    "write_catalog_manifest",
    "write_dataset",
]
