"""Planning at catalog scale: time and peak memory for 1,000 to 100,000 rows, and the requests a
first run and a rerun of a complete catalog make on S3.

Catalogs as a nightly has them: one 750x1101 JPEG source per garment, 8 target poses each from
a shared pose library (coco18 keypoint files), 8 rows per garment. Every source has its own
bytes (its own sha256). Two measurements, each through the product's own planning code
(pipeline.run.plan_and_store: what the flow's `plan` task runs, and `fpdm run --dry-run`):

  local     for each size, a fresh Python process plans the catalog into an empty output and
            stores the plan; it prints the planning time and its peak RSS (ru_maxrss), and the
            script prints RSS per row and RSS(largest)/RSS(next).
  s3        the moto S3 server on 127.0.0.1 holds a catalog of --s3-rows rows; a first plan,
            then (after every variant is written as complete) a rerun's plan, each counting its
            S3 requests by kind; the rerun must GET no source photo.

    .venv/bin/python benchmarks/bench_scale.py [--rows 1000 10000 100000] [--s3-rows 10000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

POSES = 8
SOURCE_SIZE = (750, 1101)


def base_jpeg() -> bytes:
    """A smooth 750x1101 photo-like JPEG; sources are this plus a few bytes of their own after
    its end marker (decoders stop there; the sha256 differs)."""
    y, x = np.mgrid[0 : SOURCE_SIZE[1], 0 : SOURCE_SIZE[0]]
    pixels = np.stack([x * 255 // SOURCE_SIZE[0], y * 255 // SOURCE_SIZE[1], (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=60)
    return buffer.getvalue()


def pose_library() -> dict[str, bytes]:
    from synthetic import render_person
    from synthetic.writers import keypoints_json

    poses = {}
    for index in range(POSES // 4):
        _, _, figures = render_person(seed=11, index=index)
        for k, (_, figure) in enumerate(figures):
            poses[f"pose-{index}-{k}.json"] = keypoints_json(figure.keypoints).encode()
    return poses


def catalog_files(rows: int) -> tuple[dict[str, bytes], str]:
    """Every file of a catalog of `rows` rows by relative path, and its manifest's text."""
    jpeg = base_jpeg()
    poses = pose_library()
    files = {f"poses/{name}": data for name, data in poses.items()}
    lines = ["garment_id,source_image,target_pose,variant_id"]
    for garment in range(-(-rows // POSES)):
        files[f"sources/g{garment:06d}.jpg"] = jpeg + garment.to_bytes(8, "big")
        for name in list(poses)[: min(POSES, rows - garment * POSES)]:
            lines.append(f"g{garment:06d},sources/g{garment:06d}.jpg,poses/{name},{Path(name).stem}")
    return files, "\n".join(lines) + "\n"


PLAN_ONCE = """
import resource, sys, time
from pipeline.manifest import read_manifest
from pipeline.run import RunSettings, plan_and_store
started = time.perf_counter()
plan = plan_and_store(read_manifest(sys.argv[1]), sys.argv[2], RunSettings(pose_backend="keypoints"), "bench")
print(f"{time.perf_counter() - started:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} {len(plan.chunks)}")
"""


def measure_local(sizes: list[int]) -> None:
    print(f"{'rows':>8} {'plan s':>8} {'peak RSS MB':>12} {'KB/row':>8} {'chunks':>7}")
    previous = None
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as folder:
            files, manifest = catalog_files(rows)
            for name, data in files.items():
                path = Path(folder, "catalog", name)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            Path(folder, "catalog", "manifest.csv").write_text(manifest)
            command = [sys.executable, "-c", PLAN_ONCE, f"{folder}/catalog/manifest.csv", f"{folder}/out"]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            seconds, peak_kb, chunks = result.stdout.split()
            rss_mb = int(peak_kb) / 1024
            growth = "" if previous is None else f"  RSS x{rss_mb / previous:.2f} over the previous size"
            print(f"{rows:>8} {float(seconds):>8.2f} {rss_mb:>12.0f} {int(peak_kb) / rows:>8.2f} {int(chunks):>7}{growth}")
            previous = rss_mb


def measure_s3(rows: int) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        from pipeline import outputs, storage
        from pipeline.manifest import read_manifest
        from pipeline.plans import load_chunk
        from pipeline.run import RunSettings, plan_and_store

        client = boto3.client("s3")
        client.create_bucket(Bucket="catalog")
        files, manifest = catalog_files(rows)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda item: client.put_object(Bucket="catalog", Key=f"in/{item[0]}", Body=item[1]), files.items()))
        client.put_object(Bucket="catalog", Key="in/manifest.csv", Body=manifest.encode())
        settings = RunSettings(pose_backend="keypoints")
        requests: Counter = Counter()

        def count(params, model, **kwargs):
            key = params.get("Key", "") if isinstance(params, dict) else ""
            kind = model.name
            if kind in ("GetObject", "HeadObject", "PutObject"):
                kind += " source" if key.startswith("in/sources/") else " other"
            requests[kind] += 1

        storage._client().meta.events.register("before-parameter-build.s3.*", count)
        manifest_uri, output = "s3://catalog/in/manifest.csv", "s3://catalog/out"

        started = time.perf_counter()
        first = plan_and_store(read_manifest(manifest_uri), output, settings, "first")
        first_s, first_requests = time.perf_counter() - started, dict(requests)

        # Every variant complete, as a finished nightly leaves them (a 1-pixel-tall stand-in image).
        image = Image.new("RGB", (48, 64))
        jobs = [p for chunk in first.chunks for p in load_chunk(output, "first", chunk["index"]).jobs]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda p: outputs.write_variant(output, p.job, image, {"inputs_key": p.inputs_key}), jobs))

        requests.clear()
        started = time.perf_counter()
        rerun = plan_and_store(read_manifest(manifest_uri), output, settings, "rerun")
        rerun_s, rerun_requests = time.perf_counter() - started, dict(requests)
        skipped = sum(1 for o in rerun.outcomes if o.status == "skipped")
        print(f"s3 (moto on 127.0.0.1), {rows} rows, {-(-rows // POSES)} sources:")
        print(
            f"  first plan: {first_s:.1f} s, {sum(c['jobs'] for c in first.chunks)} jobs to generate; requests {json.dumps(first_requests, sort_keys=True)}"
        )
        print(
            f"  rerun plan: {rerun_s:.1f} s, {skipped} jobs skipped as complete; requests {json.dumps(rerun_requests, sort_keys=True)}"
        )
        print(f"  source photos downloaded by the rerun: {rerun_requests.get('GetObject source', 0)}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1000, 10000, 100000], help="local catalog sizes")
    parser.add_argument("--s3-rows", type=int, default=10000, help="rows of the S3 catalog (0: skip)")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs; this process's peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
    )
    if args.rows:
        measure_local(args.rows)
    if args.s3_rows:
        measure_s3(args.s3_rows)


if __name__ == "__main__":
    main()
