"""Which decoder feeds the pipeline: OpenCV (`cv2.VideoCapture`) vs PyAV (FFmpeg, frame threading), in frames/s.

    python benchmarks/bench_decoders.py --frames 300 --resolution 360p 720p --out benchmarks/results/cpu_decoders

Both decode the same moving-shapes mp4 (mp4v, written by `vita_deploy.benchmark.make_benchmark_video`) into RGB
uint8 arrays, as `vita_deploy.pipeline.video_io` hands them to the pipeline; best of --repeats. PyAV is optional (`pip
install av`); without it only OpenCV is measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.benchmark import RESOLUTIONS, environment, make_benchmark_video  # noqa: E402


def decode_opencv(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        n += 1
    cap.release()
    return n


def decode_pyav(path: Path, threads: int) -> int:
    import av

    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--resolution", nargs="+", default=["360p", "720p"], choices=sorted(RESOLUTIONS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="PyAV frame-thread counts to try")
    p.add_argument("--out", default="benchmarks/results/cpu_decoders")
    a = p.parse_args(argv)
    cv2.setNumThreads(1)
    try:
        import av
        pyav = av.__version__
    except ImportError:
        pyav = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for res in a.resolution:
            clip = make_benchmark_video(Path(tmp) / f"{res}.mp4", a.frames, *RESOLUTIONS[res])
            cands = [("opencv " + cv2.__version__, lambda: decode_opencv(clip))]
            if pyav:
                cands += [(f"pyav {pyav} threads={t}", lambda t=t: decode_pyav(clip, t)) for t in a.threads]
            for name, fn in cands:
                best = float("inf")
                for _ in range(a.repeats):
                    start = time.perf_counter()
                    n = fn()
                    best = min(best, time.perf_counter() - start)
                rows.append({"resolution": res, "decoder": name, "frames": n, "fps": n / best})
                print(f"{res} {name}: {n / best:.0f} frames/s", flush=True)
    env = environment(argv)
    out = Path(a.out)
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    lines = ["# Decoders: frames/s into RGB arrays\n", f"Machine: {env['processor']}, {env['cpu_count']} cores, "
             f"{env['date']}.  ", f"Command: `{env['command']}`\n", "| resolution | decoder | frames/s |",
             "| --- | --- | --- |"] + [f"| {r['resolution']} | {r['decoder']} | {r['fps']:.0f} |" for r in rows]
    if not pyav:
        lines.append("\nPyAV is not installed: only OpenCV was measured.")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
