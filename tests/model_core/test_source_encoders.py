"""The two kinds of source encoder: the reference's timm ViT (`SourceEncoder`) and the demo's
`VAESourceEncoder`, the model's own VAE encoder up to its mid block, pretrained by the VAE's
training and frozen in stage 2."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from model_core.errors import InputError
from model_core.pipeline_fpdm import FPDMPipeline
from model_core.stage2 import SourceEncoder, VAESourceEncoder, grid_position


@pytest.fixture(scope="module")
def demo_init():
    return FPDMPipeline.from_pretrained("demo-init", device="cpu")


def vae_features(vae, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE encoder's feature map before its latent head, as diffusers computes it."""
    encoder = vae.encoder
    features = encoder.conv_in(pixels)
    for block in encoder.down_blocks:
        features = block(features)
    return encoder.mid_block(features)


def test_the_vae_source_encoder_gives_the_vae_s_features_one_token_per_cell_with_its_position(demo_init):
    encoder = demo_init.source_encoder
    assert isinstance(encoder, VAESourceEncoder) and encoder.hidden_size == 64 + 16
    assert demo_init.source_projector.config.in_dim == encoder.hidden_size

    pixels = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        tokens = encoder(pixels)
        features = vae_features(demo_init.vae, pixels)
    assert tokens.shape == (2, 16 * 12, 80)
    assert torch.equal(tokens[..., :64], features.flatten(2).transpose(1, 2))  # cell (row r, column c) is token 12 r + c
    positions = tokens[..., 64:]
    assert torch.equal(positions[0], positions[1])  # where a cell is, whatever the photo
    assert len({tuple(row) for row in positions[0].tolist()}) == 16 * 12  # every cell told apart
    # sin and cos of pi y (y: the cell centre's row position in [0, 1]), then of pi 2^k y and of x.
    first_row_centre = 0.5 / 16
    assert positions[0, 0, 0].item() == pytest.approx(torch.sin(torch.tensor(torch.pi * first_row_centre)).item(), abs=1e-6)
    assert torch.allclose(grid_position(16, 12, 4)[0], positions[0])


def test_its_input_is_the_photo_at_model_resolution_as_the_vae_takes_it(demo_init):
    photo = Image.new("RGB", (48, 64), (255, 0, 0))
    pixels = demo_init.source_encoder_pixels(demo_init.geometry.photo(photo))
    assert pixels.shape == (3, 64, 48)  # not padded square like a ViT's
    assert pixels[0].eq(1).all() and pixels[1:].eq(-1).all()
    vit = FPDMPipeline.from_pretrained("tiny", device="cpu")
    assert isinstance(vit.source_encoder, SourceEncoder) and vit.source_encoder_pixels(vit.geometry.photo(photo)).shape == (
        3,
        32,
        32,
    )


def test_it_copies_only_a_vae_of_its_own_layout(demo_init):
    other = VAESourceEncoder(block_out_channels=(32, 64, 64, 64))
    with pytest.raises(InputError, match="the source encoder's layout is not the VAE encoder's"):
        other.copy_vae_encoder(demo_init.vae)
    copied = VAESourceEncoder.like_vae(demo_init.vae)
    assert all(torch.equal(weight, demo_init.vae.encoder.state_dict()[name]) for name, weight in copied.state_dict().items())


def test_a_model_with_it_is_format_3_and_loads_back_as_it_was(demo_init, tmp_path):
    out = demo_init.save_pretrained(tmp_path / "model")
    index = json.loads((out / "model_index.json").read_text())
    assert index["format_version"] == 3
    assert json.loads((out / "source_encoder" / "config.json").read_text())["_class_name"] == "VAESourceEncoder"
    loaded = FPDMPipeline.from_pretrained(out, device="cpu")
    photo = Image.new("RGB", (48, 64), (30, 120, 200))
    assert torch.equal(loaded.encode_source(photo).tokens, demo_init.encode_source(photo).tokens)

    # Code that read format 2 only would have failed on its weights: the version says it first.
    index["format_version"] = 2
    (out / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(InputError, match="a VAESourceEncoder source encoder in a format_version 2 model"):
        FPDMPipeline.from_pretrained(out)
    index["format_version"] = 3
    (out / "model_index.json").write_text(json.dumps(index))
    config = json.loads((out / "source_encoder" / "config.json").read_text())
    (out / "source_encoder" / "config.json").write_text(json.dumps({**config, "_class_name": "os.system"}))
    with pytest.raises(InputError, match="unknown source encoder 'os.system'; known: SourceEncoder, VAESourceEncoder"):
        FPDMPipeline.from_pretrained(out)
    (out / "source_encoder" / "config.json").write_text(json.dumps({**config, "_class_name": ["VAESourceEncoder"]}))
    with pytest.raises(InputError, match="unknown source encoder"):
        FPDMPipeline.from_pretrained(out)


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    from stick_figures import make_pairs

    return make_pairs(tmp_path_factory.mktemp("pairs"), people=2, poses_per_person=2, seed=0)


@pytest.mark.slow  # trains for seconds
def test_the_vae_s_training_pretrains_it_and_stage_2_keeps_it_frozen(demo_init, pairs_csv, tmp_path):
    from model_core.training import train_diffusion
    from model_core.vae_training import train_vae

    vae_model = train_vae("demo-init", pairs_csv, tmp_path / "vae", max_steps=3, batch_size=4, device="cpu").out
    pretrained = FPDMPipeline.from_pretrained(vae_model, device="cpu")
    encoder = pretrained.source_encoder.state_dict()
    assert all(torch.equal(weight, pretrained.vae.encoder.state_dict()[name]) for name, weight in encoder.items())
    assert not torch.equal(encoder["conv_in.weight"], demo_init.source_encoder.state_dict()["conv_in.weight"])

    stage2 = train_diffusion(vae_model, pairs_csv, tmp_path / "stage2", max_steps=2, batch_size=4, device="cpu").out
    trained = FPDMPipeline.from_pretrained(stage2, device="cpu")
    assert all(torch.equal(weight, encoder[name]) for name, weight in trained.source_encoder.state_dict().items())
    projector = trained.source_projector.state_dict()
    assert any(not torch.equal(w, pretrained.source_projector.state_dict()[n]) for n, w in projector.items())
