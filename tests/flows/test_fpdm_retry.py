"""`fpdm retry` as an operator uses it, in this process on the test's Prefect server: a row that
was invalid in the failed run and is fixed since is retried, and nothing else is redone."""

import pytest

from fpdm_cli.main import main
from pipeline import outputs
from pipeline.outputs import read_report
from synthetic import render_person
from synthetic.writers import keypoints_json

pytestmark = pytest.mark.slow  # two flow runs of the tiny model: about 20 s


def report_of(stdout: str) -> str:
    [line] = [line for line in stdout.splitlines() if line.startswith("report: ")]
    return line.removeprefix("report: ")


def test_retry_takes_up_a_row_that_was_invalid_and_is_fixed_now(prefect_server, tmp_path, capsys, monkeypatch):
    _, _, figures = render_person(seed=3, index=0)
    figures[0][1].image.save(tmp_path / "source.png")
    for name, (_, figure) in zip(("side", "back"), figures[1:], strict=False):
        (tmp_path / f"{name}.json").write_text(keypoints_json(figure.keypoints))
    manifest = tmp_path / "manifest.csv"
    sheet = "garment_id,source_image,target_pose,seed,steps\ntee,source.png,side.json,1,2\ntee,source.png,back.json,{seed},2\n"
    manifest.write_text(sheet.format(seed="seven"))
    out = str(tmp_path / "out")
    written = []
    write_variant = outputs.write_variant
    monkeypatch.setattr(
        outputs, "write_variant", lambda output, job, *rest: written.append(job.job_id) or write_variant(output, job, *rest)
    )

    options = ["--model", "tiny", "--device", "cpu", "--pose-backend", "keypoints"]
    assert main(["run", str(manifest), "--output", out, *options]) == 1
    first = report_of(capsys.readouterr().out)
    assert [(o.row, o.status) for o in read_report(first)] == [(2, "succeeded"), (3, "failed")]
    assert written == ["tee/side"]

    manifest.write_text(sheet.format(seed="7"))  # the merchandiser fixes the seed
    assert main(["retry", first]) == 0
    retried = read_report(report_of(capsys.readouterr().out))
    assert [(o.job_id, o.row, o.status) for o in retried] == [("tee/back", 3, "succeeded")]
    assert written == ["tee/side", "tee/back"]  # the fixed row generated, the done one not touched
