"""Load run against the bundled tritonserver on 127.0.0.1: server start time, requests/s, p50/p99 latency.

    python benchmarks/bench_serve.py --export exports/tiny_native [--clients 4] [--requests 40] [--max-seconds 60]
        [--frames 12] [--height 144] [--width 256] [--protocol grpc] [--json out.json]

Writes the repository (python-ort backend) into a temporary folder, starts the server (launch -> all models ready
is the start time), sends `--warmup` requests, then `--requests` requests from `--clients` concurrent clients
(each one synthetic clip of --frames frames as an encoded mp4, or raw frames with --raw), stopping early at
--max-seconds. Latency is per request, measured by the client. Loopback only; the server is stopped by its pid.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from vita_deploy.data.synthetic import make_video
from vita_deploy.serve.client import connect, infer_video
from vita_deploy.serve.repository import RepoOptions, export_repository
from vita_deploy.serve.server import TritonServer


def clip(frames: int, height: int, width: int, folder: Path) -> tuple[np.ndarray, bytes]:
    video = make_video(np.random.default_rng(0), min_frames=frames, max_frames=frames).frames
    video = np.stack([cv2.resize(f, (width, height)) for f in video])
    path = folder / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (width, height))
    for f in video:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return video, path.read_bytes()


def machine() -> str:
    """CPU model and core count (Linux /proc/cpuinfo, else platform)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export folder (manifest.json)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=40, help="measured requests (after the warm-up)")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop sending after this long")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    p.add_argument("--raw", action="store_true", help="send uint8 frames instead of the encoded mp4")
    p.add_argument("--video-instances", type=int, default=2)
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vita_bench_serve_"))
    frames, data = clip(a.frames, a.height, a.width, work)
    request = {"frames": frames} if a.raw else {"video": data}
    export_repository(a.export, work / "repo", RepoOptions(video_instances=a.video_instances, ort_threads=a.ort_threads))
    server = TritonServer(work / "repo", work_dir=work)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    try:
        server.start()
        url = server.grpc_url if a.protocol == "grpc" else server.http_url
        warm = connect(url, a.protocol)
        for _ in range(a.warmup):
            infer_video(warm, a.protocol, **request)
        warm.close()
        remaining = [a.requests]
        deadline = time.perf_counter() + a.max_seconds

        def worker() -> None:
            client = connect(url, a.protocol)
            try:
                while time.perf_counter() < deadline:
                    with lock:
                        if remaining[0] <= 0:
                            return
                        remaining[0] -= 1
                    t0 = time.perf_counter()
                    try:
                        infer_video(client, a.protocol, **request)
                        with lock:
                            latencies.append(time.perf_counter() - t0)
                    except Exception as e:  # noqa: BLE001 - counted and reported
                        with lock:
                            errors.append(str(e))
            finally:
                client.close()

        threads = [threading.Thread(target=worker) for _ in range(a.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.stop()
    lat = np.sort(np.asarray(latencies)) * 1e3
    figures = {
        "machine": machine(),
        "command": " ".join(["python", "benchmarks/bench_serve.py", *(argv if argv is not None else sys.argv[1:])]),
        "server_start_s": round(server.start_s, 2) if server.start_s else None,
        "clip": f"{a.frames} frames {a.width}x{a.height} ({'raw uint8' if a.raw else f'mp4, {len(data)} bytes'})",
        "protocol": a.protocol, "clients": a.clients, "requests_ok": len(latencies), "errors": len(errors),
        "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2) if wall else None,
        "frames_per_s": round(len(latencies) * a.frames / wall, 1) if wall else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
    }
    print(json.dumps(figures, indent=1))
    if errors:
        print(f"first error: {errors[0]}", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1))
    return 0 if latencies and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
