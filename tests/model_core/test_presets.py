"""What a model's name means (resolve_model), and what describe_model reports about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_core import presets
from model_core.errors import InputError
from model_core.presets import TRAINED_PRESETS, ModelKind, ModelSource, preset_source, resolve_model


def test_each_kind_of_model_name_resolves_to_its_source(tmp_path):
    tiny = resolve_model("tiny")
    assert tiny.kind is ModelKind.RANDOM_INIT_PRESET and tiny.has_weights
    assert tiny.config == presets.TINY and tiny.directory is None

    demo = resolve_model("demo")
    assert demo.kind is ModelKind.TRAINED_PRESET and demo.directory == TRAINED_PRESETS["demo"]

    production = resolve_model("fpdm-sd21")
    assert production.kind is ModelKind.PRESET_WITHOUT_WEIGHTS and not production.has_weights
    assert production.config["name"] == "fpdm-sd21"

    directory = resolve_model(str(tmp_path))
    assert directory.kind is ModelKind.MODEL_DIRECTORY and directory.directory == tmp_path

    # Not a preset and not there: still a model directory, for its reader to say what is missing.
    assert resolve_model("no-such-model").kind is ModelKind.MODEL_DIRECTORY


def test_a_local_path_named_like_a_preset_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "demo").mkdir()
    assert resolve_model("tiny") == ModelSource("tiny", ModelKind.MODEL_DIRECTORY, directory=Path("tiny"))
    assert resolve_model("demo").kind is ModelKind.MODEL_DIRECTORY
    # A command whose argument can only be a preset still means the preset.
    assert preset_source("tiny").kind is ModelKind.RANDOM_INIT_PRESET
    assert preset_source("demo").directory == TRAINED_PRESETS["demo"]


def test_a_path_object_is_always_a_directory_and_a_source_is_kept_as_it_is():
    assert resolve_model(Path("tiny")).kind is ModelKind.MODEL_DIRECTORY
    source = resolve_model("tiny")
    assert resolve_model(source) is source


def test_a_trained_preset_missing_from_the_installation_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(TRAINED_PRESETS, "demo", tmp_path / "not-installed")
    with pytest.raises(InputError, match="'demo': its weights are not in this installation"):
        resolve_model("demo")


def test_an_unknown_preset_name_lists_the_presets():
    with pytest.raises(InputError, match="unknown preset 'huge'; presets: tiny, demo-init, fpdm-sd21, demo"):
        preset_source("huge")


def test_a_preset_without_weights_is_neither_loaded_nor_checksummed():
    from model_core.pipeline_fpdm import FPDMPipeline, model_checksum

    for use in (FPDMPipeline.from_pretrained, model_checksum):
        with pytest.raises(InputError, match="preset 'fpdm-sd21' has no weights: build a model directory"):
            use("fpdm-sd21")


def test_describe_model_of_a_preset_without_weights_counts_its_architecture():
    from model_core.model_info import describe_model

    described = describe_model("fpdm-sd21")
    assert described.checksum is None
    assert described.origin == "preset without weights; see `fpdm model assemble`"
    assert (described.width, described.height) == (352, 512) and described.uses_fusion
    assert (described.scheduler, described.prediction_type) == ("DDPMScheduler", "v_prediction")
    assert [part.name for part in described.parts] == [
        "fusion", "fusion_projector", "source_encoder", "source_projector", "pose_embedding", "unet", "vae",
    ]  # fmt: skip
    assert all(part.dtype == "no weights" and part.parameters > 0 for part in described.parts)
    assert described.total_parameters == sum(part.parameters for part in described.parts) > 10**9


def test_describe_model_of_a_random_initialised_preset():
    from model_core.model_info import describe_model
    from model_core.pipeline_fpdm import model_checksum

    described = describe_model("tiny")
    assert described.name == "tiny" and described.origin == "preset, random-initialised weights"
    assert described.checksum == model_checksum("tiny")
    assert all(part.dtype == "float32" for part in described.parts)
