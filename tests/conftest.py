from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def deepfashion_dir() -> Path:
    """DeepFashion sample photos, keypoints and reference skeletons (../shared/data/deepfashion)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "deepfashion"
    if not (path / "pose").is_dir() or not (path / "pose_img").is_dir():
        pytest.fail(
            f"DeepFashion test data not found at {path} (expected pose/ and pose_img/ there); "
            "it lives next to the repository in shared/data/deepfashion"
        )
    return path
