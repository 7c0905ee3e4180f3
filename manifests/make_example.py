"""Write the example the README's first command runs on: five synthetic garments, each with a
source photo and three target poses, and the manifest `example.csv` that lists them.

The repository ships no real catalog photos (the DeepFashion samples next to it are for tests
only), so the example comes from the synthetic catalog the `demo` model was trained on
(the `synthetic` package, what `fpdm synth` writes), from seed 3: the demo model trained on seed 1
and was measured on seeds 2 and 4, and seeds share no garment, so none of these garments was seen in
training. Everything is deterministic: running this again writes the same bytes.

    .venv/bin/python manifests/make_example.py      # writes manifests/example/ and example.csv
"""

from __future__ import annotations

from pathlib import Path

from synthetic import write_catalog_manifest

MANIFESTS = Path(__file__).resolve().parent
SEED = 3
GARMENTS = 5  # textures take turns, so five garments show all five (dots, logo, solid, stripes, checks)


if __name__ == "__main__":
    example = write_catalog_manifest(MANIFESTS / "example", GARMENTS, seed=SEED, manifest=MANIFESTS / "example.csv")
    print(f"{example.manifest}: {example.jobs} jobs, garments {', '.join(example.garments)}")
