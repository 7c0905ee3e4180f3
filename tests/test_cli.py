"""The `fpdm` command line, run as a user runs it: a separate process, exit code, stdout, stderr."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "manifests" / "example" / "s3g0000-dots"  # one garment of the README's example
EXAMPLE_SOURCE = EXAMPLE / "source.png"
FRONT_POSE = EXAMPLE / "poses" / "arms-folded-front.json"
WALK_POSE = EXAMPLE / "poses" / "walk-front.json"
# What generate_example writes: <pose file stem>_s<sample>.png.
GENERATED = ("arms-folded-front_s0.png", "arms-folded-front_s1.png", "walk-front_s0.png", "walk-front_s1.png")

# Small enough for a CPU in seconds; two poses and two samples exercise the batching and naming.
QUICK_GENERATE = ["--steps", "2", "--samples", "2", "--seed", "7", "--device", "cpu"]


def run_fpdm(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fpdm_cli.main", *map(str, args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *expected_in_message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fpdm: error: "), lines[0]
    for expected in expected_in_message:
        assert expected in lines[0], lines[0]


def generate_example(model: str | Path, out: Path) -> subprocess.CompletedProcess:
    return run_fpdm(
        "generate",
        "--model",
        model,
        "--source",
        EXAMPLE_SOURCE,
        "--pose",
        FRONT_POSE,
        "--pose",
        WALK_POSE,
        "--out",
        out,
        *QUICK_GENERATE,
    )


@pytest.fixture(scope="module")
def tiny_generation(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("generate_tiny")
    return generate_example("tiny", out), out


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("models") / "tiny"
    result = run_fpdm("model", "save-preset", "tiny", model_dir)
    assert result.returncode == 0, result.stderr
    return model_dir


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_generate_writes_one_png_per_pose_and_sample_and_prints_them(tiny_generation):
    result, out = tiny_generation
    assert result.returncode == 0, result.stderr
    expected = [out / name for name in GENERATED]
    assert result.stdout.split() == [str(path) for path in expected]
    assert sorted(out.iterdir()) == sorted(expected)
    for path in expected:
        assert path.read_bytes().startswith(b"\x89PNG")
    # Samples of one pose start from different noise.
    assert (out / "arms-folded-front_s0.png").read_bytes() != (out / "arms-folded-front_s1.png").read_bytes()


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_saved_preset_generates_the_same_images_as_the_preset(tiny_generation, saved_tiny, tmp_path):
    preset_result, preset_out = tiny_generation
    assert preset_result.returncode == 0, preset_result.stderr
    result = generate_example(saved_tiny, tmp_path)
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (preset_out / name).read_bytes(), name


def test_generate_samples_with_the_scheduler_asked_for(tmp_path, capsys):
    from fpdm_cli.main import main

    common = ["generate", "--source", str(EXAMPLE_SOURCE), "--pose", str(FRONT_POSE), "--steps", "2", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "model-own")]) == 0
    assert main([*common, "--out", str(tmp_path / "ddim"), "--scheduler", "DDIMScheduler"]) == 0
    name = "arms-folded-front_s0.png"
    assert (tmp_path / "model-own" / name).read_bytes() != (tmp_path / "ddim" / name).read_bytes()
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--scheduler", "Nope"]) == 2
    assert "unknown diffusers scheduler class 'Nope'" in capsys.readouterr().err


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_poses_sharing_a_file_stem_get_distinct_outputs(tmp_path):
    other_front = tmp_path / "other" / FRONT_POSE.name
    other_front.parent.mkdir()
    shutil.copy(WALK_POSE, other_front)
    out = tmp_path / "out"
    result = run_fpdm(
        "generate",
        "--source",
        EXAMPLE_SOURCE,
        "--pose",
        FRONT_POSE,
        "--pose",
        other_front,
        "--out",
        out,
        "--steps",
        "1",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["arms-folded-front-1_s0.png", "arms-folded-front-2_s0.png"]


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_unreadable_source_image_is_one_error_line_naming_it(tmp_path):
    not_an_image = tmp_path / "photo.jpg"
    not_an_image.write_text("this is text, not a JPEG\n")
    result = run_fpdm("generate", "--source", not_an_image, "--pose", FRONT_POSE, "--out", tmp_path / "out")
    assert_one_error_line(result, str(not_an_image))


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_keypoint_file_of_unknown_format_is_one_error_line_naming_it(tmp_path):
    unknown_format = tmp_path / "pose.yaml"
    unknown_format.write_text("nose: [1, 2]\n")
    result = run_fpdm("generate", "--source", EXAMPLE_SOURCE, "--pose", unknown_format, "--out", tmp_path / "out")
    assert_one_error_line(result, str(unknown_format))


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_model_directory_missing_a_part_is_one_error_line_naming_the_part(saved_tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(saved_tiny, broken)
    shutil.rmtree(broken / "unet")
    result = run_fpdm("generate", "--model", broken, "--source", EXAMPLE_SOURCE, "--pose", FRONT_POSE, "--out", tmp_path / "out")
    assert_one_error_line(result, str(broken), "unet")


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_model_info_prints_parameter_counts():
    result = run_fpdm("model", "info", "tiny")
    assert result.returncode == 0, result.stderr
    for part in ("fusion", "fusion_projector", "source_encoder", "source_projector", "pose_embedding", "unet", "vae"):
        assert any(line.split()[:1] == [part] and "parameters" in line for line in result.stdout.splitlines()), part
    assert "DDPMScheduler" in result.stdout


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_model_info_of_a_directory_prints_its_checksum(saved_tiny):
    from model_core.pipeline_fpdm import model_checksum

    result = run_fpdm("model", "info", saved_tiny)
    assert result.returncode == 0, result.stderr
    assert f"checksum: {model_checksum(saved_tiny)}" in result.stdout


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_model_info_of_the_trained_demo_preset_names_its_directory_and_stored_dtype():
    from model_core.pipeline_fpdm import model_checksum
    from model_core.presets import TRAINED_PRESETS

    result = run_fpdm("model", "info", "demo")
    assert result.returncode == 0, result.stderr
    assert f"from: trained preset, model directory {TRAINED_PRESETS['demo']}" in result.stdout
    assert f"checksum: {model_checksum('demo')}" in result.stdout
    assert "stages: full (stage 1 fusion + stage 2)" in result.stdout
    assert all("float32" in line for line in result.stdout.splitlines() if "parameters" in line and "total" not in line)


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_save_preset_of_the_demo_writes_its_weights_unchanged(tmp_path):
    from model_core.pipeline_fpdm import model_checksum

    result = run_fpdm("model", "save-preset", "demo", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    assert model_checksum(tmp_path / "demo") == model_checksum("demo")


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_pairs_csv_without_a_required_column_is_one_error_line_naming_it(tmp_path):
    pairs = tmp_path / "bad.csv"
    pairs.write_text("source_image,target_image\nsource.png,target.png\n")
    result = run_fpdm("train", "fusion", "--pairs", pairs, "--model", "tiny", "--out", tmp_path / "run")
    assert_one_error_line(result, "target_pose")


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_usage_errors_exit_2():
    assert run_fpdm("generate", "--source", EXAMPLE_SOURCE).returncode == 2  # no --pose, no --out
    assert run_fpdm("generate", "--source", EXAMPLE_SOURCE, "--pose", FRONT_POSE, "--out", "x", "--steps", "0").returncode == 2


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_deepfashion_keypoints_are_read_on_the_source_photos_canvas(deepfashion_dir, tmp_path):
    # A .txt pose has no canvas of its own: it is scaled to the source photo (750x1101 here).
    garment = "MEN/Tees_Tanks/id_00004047"
    result = run_fpdm(
        "generate",
        "--source",
        deepfashion_dir / "img" / garment / "01_1_front.jpg",
        "--pose",
        deepfashion_dir / "pose" / garment / "01_2_side.txt",
        "--out",
        tmp_path,
        "--steps",
        "1",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "01_2_side_s0.png")]


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_validate_exit_codes_follow_the_manifest(tmp_path):
    good = run_fpdm("validate", REPO_ROOT / "manifests" / "example.csv")
    assert good.returncode == 0, good.stderr
    assert "15 valid row(s), 0 invalid" in good.stdout

    bad_rows = tmp_path / "bad.csv"
    bad_rows.write_text("garment_id,source_image,target_pose,seed\ntee-1,a.jpg,p.json,1\n../x,a.jpg,p.json,one\n")
    listed = run_fpdm("validate", bad_rows)
    assert listed.returncode == 1
    assert "garment_id" in listed.stdout and "'one' is not a whole number" in listed.stdout
    assert "1 valid row(s), 1 invalid" in listed.stdout

    no_column = tmp_path / "no_column.csv"
    no_column.write_text("garment_id,source_image\ntee-1,a.jpg\n")
    unusable = run_fpdm("validate", no_column)
    assert unusable.returncode == 2
    assert unusable.stderr.strip().startswith("fpdm: error:") and "target_pose" in unusable.stderr


def test_validate_of_a_manifest_on_s3_refuses_inputs_elsewhere_unless_allowed(s3, capsys):
    from fpdm_cli.main import main
    from pipeline import storage

    sheet = "garment_id,source_image,target_pose\ntee,/etc/passwd,p.json\nhat,s3://team-b/hat.jpg,p.json\n"
    storage.write_bytes("s3://catalog/m.csv", sheet.encode())
    assert main(["validate", "s3://catalog/m.csv"]) == 1
    listed = capsys.readouterr().out
    assert (
        "/etc/passwd: a local path in a manifest on S3" in listed
        and "s3://team-b/hat.jpg: outside the manifest's bucket" in listed
    )
    assert main(["validate", "s3://catalog/m.csv", "--allow-input", "s3://team-b", "--allow-input", "/etc"]) == 0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--allow-input", "poses/"], "--allow-input poses/: give an s3:// prefix or an absolute folder"),
        (["--image-format", "NOPE"], "image formats: NOPE"),
        (["--max-input-bytes", "0"], "max input bytes must be at least 1"),
        (["--batch-size", "big"], "batch size must be a whole number of at least 1, or auto; got 'big'"),
        (["--batch-size", "0"], "batch size must be a whole number of at least 1, or auto; got 0"),
    ],
)
def test_run_refuses_unusable_input_settings_before_starting(tmp_path, capsys, option, message):
    from fpdm_cli.main import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("garment_id,source_image,target_pose\ntee,a.jpg,b.json\n")
    assert main(["run", str(manifest), "--output", str(tmp_path / "out"), *option]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # starts `fpdm` in a process of its own: seconds of imports
def test_poses_detect_writes_coco18_files_and_goes_on_past_a_bad_photo(tmp_path, deepfashion_dir):
    photos = deepfashion_dir / "img"
    front = photos / "MEN" / "Tees_Tanks" / "id_00004047" / "01_3_back.jpg"
    same_stem = photos / "WOMEN" / "Blouses_Shirts" / "id_00001530" / "01_3_back.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(front.read_bytes()[:2000])  # a truncated JPEG
    result = run_fpdm("poses", "detect", front, broken, same_stem, "--out", tmp_path / "poses")
    assert result.returncode == 1
    assert "fpdm: error: " + str(broken) in result.stderr
    written = sorted(p.name for p in (tmp_path / "poses").iterdir())
    assert written == ["01_3_back-2.json", "01_3_back.json"]  # same stem, nothing overwritten
    from model_core.keypoints import read_keypoints

    keypoints = read_keypoints(tmp_path / "poses" / "01_3_back.json")
    assert (keypoints.width, keypoints.height) == (750, 1101) and keypoints.visible.sum() >= 10


def option_help(capsys, *command: str) -> dict[str, str]:
    """`fpdm COMMAND --help`, in this process: each option's line(s) by flag, whitespace normalised."""
    from fpdm_cli.main import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    options = capsys.readouterr().out.split("options:", 1)[1]
    blocks = re.split(r"\n  (?=-)", options)  # an option starts a line at indent 2; its help wraps deeper
    return {block.split()[0]: " ".join(block.split()) for block in blocks if block.strip()}


def description(capsys, *command: str) -> str:
    from fpdm_cli.main import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_run_options_left_out_take_run_settings_defaults_which_its_help_states(capsys):
    from fpdm_cli.catalog_commands import RUN_OPTIONS
    from fpdm_cli.main import build_parser
    from pipeline.run import RunSettings

    args = build_parser().parse_args(["run", "manifest.csv", "--output", "out"])
    assert set(RUN_OPTIONS) <= set(RunSettings().as_parameters())
    assert not set(RUN_OPTIONS) & set(vars(args))
    helps = option_help(capsys, "run")
    flags = {
        "--model": "model", "--batch-size": "batch_size", "--pose-backend": "pose_backend", "--device": "device",
        "--max-input-bytes": "max_input_bytes",
    }  # fmt: skip
    for flag, field in flags.items():
        assert re.search(rf"\(default:? {getattr(RunSettings, field)}\)", helps[flag]), helps[flag]


def test_help_states_the_defaults_and_columns_the_code_uses(capsys):
    import inspect

    from model_core.training import train_diffusion, train_fusion
    from pipeline.manifest import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

    fusion = inspect.signature(train_fusion).parameters
    batch, lr = re.search(r"\(batch (\d+), lr ([\d.e-]+),", description(capsys, "train", "fusion")).groups()
    assert (int(batch), float(lr)) == (fusion["batch_size"].default, fusion["learning_rate"].default)

    diffusion = inspect.signature(train_diffusion).parameters
    pattern = r"\(batch (\d+) with (\d+) accumulation steps, lr ([\d.e-]+) with warm-up,"
    batch, accumulation, lr = re.search(pattern, description(capsys, "train", "diffusion")).groups()
    assert (int(batch), int(accumulation), float(lr)) == (
        diffusion["batch_size"].default, diffusion["gradient_accumulation"].default, diffusion["learning_rate"].default,
    )  # fmt: skip
    text = description(capsys, "train", "diffusion")
    assert f"x{diffusion['lr_decay_factor'].default} late in the run, no weight decay, no clipping;" in text
    assert diffusion["weight_decay"].default == 0 and diffusion["max_grad_norm"].default is None
    helps = option_help(capsys, "train", "diffusion")
    assert f"(default {diffusion['warmup_fraction'].default}:" in helps["--warmup-fraction"]
    assert f"(default {diffusion['lr_decay_at'].default}:" in helps["--lr-decay-at"]

    columns = f"Columns: {', '.join(REQUIRED_COLUMNS)} (required); {', '.join(OPTIONAL_COLUMNS)} (optional)"
    assert columns in description(capsys, "validate")


def test_help_loads_no_heavy_library():
    heavy = {"torch", "diffusers", "prefect", "pandas", "rich", "safetensors"}
    code = f"import sys; from fpdm_cli.main import build_parser; build_parser(); print(sorted({heavy!r} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_assemble_takes_the_clip_activation_only_when_stated():
    from fpdm_cli.main import build_parser

    required = [
        "model",
        "assemble",
        "--preset",
        "fpdm-sd21",
        "--sd",
        "sd",
        "--clip",
        "c.bin",
        "--source-encoder",
        "d",
        "--out",
        "o",
    ]
    parse = build_parser().parse_args
    assert parse(required).quick_gelu is None  # assemble reads it from the checkpoint
    assert parse([*required, "--quick-gelu"]).quick_gelu is True
    assert parse([*required, "--no-quick-gelu"]).quick_gelu is False
