"""Sampling: three-branch guidance, seeds, batch invariance, save/load, source reuse."""

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from model_core.errors import InputError
from model_core.keypoints import read_keypoints
from model_core.pipeline_fpdm import FPDMPipeline, model_checksum, three_branch_guidance
from model_core.training import without_fusion


@pytest.fixture(scope="module")
def pipe():
    return FPDMPipeline.from_pretrained("tiny", device="cpu")


@pytest.fixture(scope="module")
def photos(deepfashion_dir):
    images = sorted((deepfashion_dir / "img").rglob("*.jpg"))
    return [Image.open(p).convert("RGB") for p in images]


@pytest.fixture(scope="module")
def poses(deepfashion_dir):
    return [read_keypoints(p, 750, 1101) for p in sorted((deepfashion_dir / "pose").rglob("*.txt"))]


class StubUNet(torch.nn.Module):
    """Stands in for the UNet: a fixed non-linear function of every input, so each guidance
    branch gives a different prediction, and a record of the batches it was called with."""

    def __init__(self, real):
        super().__init__()
        self.config = real.config
        self.conv_in = torch.nn.Conv2d(real.config.in_channels, real.config.block_out_channels[0], 1)
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None):
        self.calls.append(len(sample))
        hidden = self.conv_in(sample)  # the pose residual is added here by the hook
        out = torch.tanh(hidden[:, : sample.shape[1]]) * (1 + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1))
        if class_labels is not None:
            out = out + torch.sin(class_labels.sum(dim=1)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=out)


def _conditions(pipe, photos, poses, n=2):
    sources = [pipe.encode_source(photos[i]) for i in range(n)]
    targets = [pipe.encode_pose(poses[i + 1]) for i in range(n)]
    context = pipe.source_projector(torch.stack([s.tokens for s in sources]))
    pose = pipe.pose_embedding(torch.stack([p.skeleton for p in targets]))
    # A fresh pose embedding is zero-initialised; give it something to carry.
    pose = pose + torch.randn_like(pose)
    fusion = pipe.fusion.fuse(torch.stack([s.clip_embedding for s in sources]), torch.stack([p.clip_embedding for p in targets]))
    return context, pose, fusion


def test_three_branch_guidance_matches_the_formula_in_one_unet_batch(pipe, photos, poses):
    context, pose, fusion = _conditions(pipe, photos, poses)
    stub = StubUNet(pipe.unet)
    real_unet, pipe.unet = pipe.unet, stub
    try:
        latents = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(0))
        t, w = torch.tensor(500), 2.0
        guided = pipe.predict_noise(latents, t, context, pose, fusion, w)
        assert stub.calls == [6]  # three branches of two jobs, one UNet call

        def branch(ctx, pose_residual, fusion_in):
            # The fusion projector (the reference's mlp head) maps the embedding, zeros included.
            hook = stub.conv_in.register_forward_hook(lambda m, a, o: o + pose_residual)
            try:
                return stub(latents, t, ctx, pipe.fusion_projector(fusion_in)).sample
            finally:
                hook.remove()

        zeros = torch.zeros_like
        e_u = branch(zeros(context), zeros(pose), zeros(fusion))
        e_s = branch(context, pose, zeros(fusion))
        e_f = branch(context, pose, fusion)
        expected = e_u + w * (e_s - e_u) + w * (e_f - e_s)
        torch.testing.assert_close(guided, expected)
        assert not torch.allclose(e_s, e_f) and not torch.allclose(e_u, e_s)  # the branches really differ

        stub.calls.clear()
        two_branch = pipe.predict_noise(latents, t, context, pose, None, w)
        assert stub.calls == [4]
        torch.testing.assert_close(two_branch, e_u + w * (e_s - e_u))
    finally:
        pipe.unet = real_unet


def test_three_branch_guidance_function():
    e_u, e_s, e_f = torch.tensor(1.0), torch.tensor(3.0), torch.tensor(4.0)
    assert three_branch_guidance(e_u, e_s, e_f, 2.0).item() == 1 + 2 * 2 + 2 * 1


def test_seeds_reproduce_and_differ(pipe, photos, poses):
    a = pipe.generate(photos[0], [poses[1]], seed=7, num_inference_steps=4, output_type="pt")
    b = pipe.generate(photos[0], [poses[1]], seed=7, num_inference_steps=4, output_type="pt")
    c = pipe.generate(photos[0], [poses[1]], seed=8, num_inference_steps=4, output_type="pt")
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.01


def test_sample_k_of_a_seed_is_sample_0_of_seed_plus_k(pipe, photos, poses):
    several = pipe.generate(photos[0], [poses[2]], seed=10, num_inference_steps=3, num_images_per_prompt=3, output_type="pt")
    assert several.shape[:2] == (1, 3)
    single = pipe.generate(photos[0], [poses[2]], seed=12, num_inference_steps=3, output_type="pt")
    assert (several[0, 2] - single[0, 0]).abs().mean() < 0.02
    assert (several[0, 0] - several[0, 1]).abs().mean() > 0.01  # samples differ


def test_batch_invariance(pipe, photos, poses):
    """A job renders the same alone and inside a batch of 8 with other sources and poses."""
    sources = [pipe.encode_source(photos[i % len(photos)]) for i in range(8)]
    targets = [pipe.encode_pose(poses[(i + 3) % len(poses)]) for i in range(8)]
    seeds = list(range(100, 108))
    batch = pipe(sources, targets, seeds, num_inference_steps=5, output_type="pt")
    for i in (0, 5):
        alone = pipe([sources[i]], [targets[i]], [seeds[i]], num_inference_steps=5, output_type="pt")
        # images are in [-1, 1]: 1% of the pixel range is 0.02
        assert (batch[i] - alone[0]).abs().mean() < 0.02


def test_cached_source_encoding_gives_the_same_images(pipe, photos, poses):
    encoding = pipe.encode_source(photos[3])
    targets = [pipe.encode_pose(p) for p in poses[:3]]
    reused = pipe([encoding] * 3, targets, [1, 2, 3], num_inference_steps=3, output_type="pt")
    fresh = torch.cat(
        [
            pipe([pipe.encode_source(photos[3])], [t], [s], num_inference_steps=3, output_type="pt")
            for t, s in zip(targets, [1, 2, 3], strict=True)
        ]
    )
    assert (reused - fresh).abs().mean() < 0.02


def test_save_load_round_trip_gives_identical_weights_and_outputs(pipe, photos, poses, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    assert not list((tmp_path / "model").rglob("*.bin")) and not list((tmp_path / "model").rglob("*.pt"))
    loaded = FPDMPipeline.from_pretrained(tmp_path / "model", device="cpu")
    for name, module in pipe.modules().items():
        original, restored = module.state_dict(), loaded.modules()[name].state_dict()
        assert original.keys() == restored.keys()
        assert all(torch.equal(original[k], restored[k]) for k in original), name
    a = pipe.generate(photos[1], [poses[4]], seed=3, num_inference_steps=4, output_type="pt")
    b = loaded.generate(photos[1], [poses[4]], seed=3, num_inference_steps=4, output_type="pt")
    assert (a - b).abs().max() < 1e-5


def test_stage2_only_model_has_no_class_embedding_and_round_trips(pipe, photos, poses, tmp_path):
    stage2 = without_fusion(pipe)
    assert stage2.fusion is None and not stage2.uses_fusion
    assert stage2.unet.class_embedding is None
    stage2.save_pretrained(tmp_path / "stage2")
    assert not (tmp_path / "stage2" / "fusion").exists()
    loaded = FPDMPipeline.from_pretrained(tmp_path / "stage2", device="cpu")
    a = stage2.generate(photos[0], [poses[0]], seed=1, num_inference_steps=3, output_type="pt")
    b = loaded.generate(photos[0], [poses[0]], seed=1, num_inference_steps=3, output_type="pt")
    assert (a - b).abs().max() < 1e-5


def test_no_fusion_mode_of_a_full_model_changes_the_output(pipe, photos, poses):
    """--no-fusion drops the fusion branch: with a non-zero class embedding the result differs."""
    with torch.no_grad():
        for p in pipe.unet.class_embedding.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # a fresh class embedding is near-inert; make it count
    try:
        full = pipe.generate(photos[0], [poses[5]], seed=2, num_inference_steps=3, output_type="pt")
        stage2 = pipe.generate(photos[0], [poses[5]], seed=2, num_inference_steps=3, use_fusion=False, output_type="pt")
        assert (full - stage2).abs().mean() > 1e-3
    finally:
        fresh = FPDMPipeline.from_pretrained("tiny", device="cpu")
        pipe.unet.class_embedding.load_state_dict(fresh.unet.class_embedding.state_dict())


def test_inputs_of_any_aspect_ratio_are_padded_not_stretched(pipe):
    wide = Image.new("RGB", (400, 100), (255, 0, 0))
    fitted = np.asarray(pipe.geometry.photo(wide))
    assert fitted.shape == (64, 48, 3)
    red_rows = np.where((fitted[:, :, 0] > 200) & (fitted[:, :, 1] < 60))[0]
    # 4:1 photo in a 48 px wide frame: 12 px tall band of red, centred, white above and below
    assert 10 <= len(set(red_rows)) <= 13
    assert fitted[0, 24].tolist() == [255, 255, 255]


def test_a_model_directory_with_a_missing_tensor_is_refused(pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    from model_core.errors import InputError

    pipe.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors.pop("conv_out.weight")
    save_file(tensors, weights)
    with pytest.raises(InputError, match=r"part 'unet' does not match its config \(missing keys: conv_out.weight"):
        FPDMPipeline.from_pretrained(tmp_path / "model", device="cpu")
    pipe.save_pretrained(tmp_path / "complete")
    shutil.rmtree(tmp_path / "complete" / "vae")
    with pytest.raises(InputError, match="missing part 'vae'"):
        FPDMPipeline.from_pretrained(tmp_path / "complete", device="cpu")


def test_model_checksum_follows_the_weights_not_the_folder(pipe, tmp_path):
    first, second = pipe.save_pretrained(tmp_path / "a"), pipe.save_pretrained(tmp_path / "b")
    assert model_checksum(first) == model_checksum(second)  # same weights in another folder
    # ...and saved again after loading from either folder: where it came from is not recorded.
    resaved = FPDMPipeline.from_pretrained(second, device="cpu").save_pretrained(tmp_path / "c")
    assert model_checksum(resaved) == model_checksum(first)
    assert model_checksum("tiny") == model_checksum("tiny") != model_checksum(first)
    (second / "checkpoint-000100").mkdir()  # a training output directory's extras
    (second / "checkpoint-000100" / "training_state.pt").write_bytes(b"x")
    (second / "train_log.jsonl").write_text("{}\n")
    assert model_checksum(second) == model_checksum(first)
    weights = next((second / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert model_checksum(second) != model_checksum(first)
    with pytest.raises(InputError, match="not a model directory"):
        model_checksum(tmp_path)
