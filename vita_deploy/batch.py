"""Batch inference over many videos with Ray Data, the library of `vita-deploy batch VIDEOS --out DIR`
(vita_deploy/commands/batch.py).

    vita-deploy batch videos/ --out runs/batch                      # local Ray cluster, eager tiny model
    vita-deploy batch list.txt --out runs/b --backend onnxruntime --export exports/tiny --actors 4
    vita-deploy batch videos/ --out runs/b --address auto --actors 8 --gpus-per-actor 1 \\
        --backend tensorrt --export exports/r50                               # an existing cluster, one GPU per actor

VIDEOS is a folder (its video files and frame folders, sorted by name) or a text file listing one video per
line (relative to the file's folder; `#` starts a comment). Each Ray actor holds one model (eager PyTorch, ONNX
Runtime sessions or TensorRT engines) and runs the same `run_video` as `vita-deploy infer` on one video
at a time (`map_batches` with a callable class on an actor pool). The driver writes, as results arrive:
    DIR/videos/<name>.json   per video: video path, video_id, height, width, num_frames, YouTube-VIS `results`
    DIR/results.json         all videos' YouTube-VIS results in one list (rewritten at the end)
    DIR/videos.json          video_id -> path, status ("ok" / the error)
    DIR/ray.log              Ray's own output (start-up and actor warnings), kept off the terminal
A video that fails (corrupt, unreadable) is reported and the others finish (exit code 2 if any failed). With
--resume, videos whose per-video JSON exists are skipped (failed ones are retried). Paths must be readable on
every node of the cluster; DIR is written by the driver only.

Without --address a local cluster is started (`ray.init(num_cpus=..., object_store_memory=256 MiB,
include_dashboard=False)`); it listens on all interfaces like any Ray node (the tests run it inside a
loopback-only network namespace).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO
from dataclasses import dataclass
from pathlib import Path

from vita_deploy.errors import InputError
from vita_deploy.files import atomic_write_text
from vita_deploy.pipeline.video_io import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
OBJECT_STORE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class VideoJob:
    path: str  # absolute
    video_id: int  # 1-based position in the sorted input list
    name: str  # per-video JSON is videos/<name>.json


def list_videos(source: str | Path) -> list[VideoJob]:
    """The videos of a folder (video files and frame folders, sorted) or of a list file, with stable ids/names."""
    source = Path(source)
    if source.is_dir():
        entries = sorted(p for p in source.iterdir()
                         if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
                         or (p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())))
        if not entries:
            raise InputError("the folder holds no videos", source,
                             f"pass a folder of video files ({', '.join(VIDEO_SUFFIXES)}) or frame folders, "
                             "or a text file listing them")
        base = source
    elif source.is_file():
        try:
            lines = source.read_text().splitlines()
        except UnicodeDecodeError:
            raise InputError("the video list is not a text file", source,
                             "pass a folder of videos or a text file with one path per line") from None
        entries = [(source.parent / ln.split("#", 1)[0].strip()) for ln in lines if ln.split("#", 1)[0].strip()]
        if not entries:
            raise InputError("the video list names no videos", source, "put one video path per line")
        missing = [str(p) for p in entries if not p.exists()]
        if missing:
            raise InputError(f"{len(missing)} listed video(s) do not exist, e.g. {missing[0]}", source,
                             "fix the paths (relative paths are relative to the list's folder)")
        base = source.parent
    else:
        raise InputError("does not exist", source, "pass a folder of videos or a text file listing them")
    names: dict[str, int] = {}
    jobs = []
    for i, p in enumerate(entries, 1):
        try:
            name = str(p.resolve().relative_to(base.resolve())).replace(os.sep, "__")
        except ValueError:
            name = p.name
        if name in names:  # same file name from two folders of a list
            name = f"{name}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
        names[name] = i
        jobs.append(VideoJob(str(p.resolve()), i, name))
    return jobs


class VideoPredictor:
    """Ray Data callable class: one model per actor; each batch row is a video, each answer its result JSON."""

    def __init__(self, backend: str, export: str | None, checkpoint: str | None, config: str | None,
                 device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.backend, self.export, self.device = backend, export, device
        self.model = None
        if backend == "torch":
            from vita_deploy.loading import load_model

            self.model = load_model(checkpoint, config).to(device)
        else:  # sessions/engines are made once per actor, not per video (infer_file makes them per call)
            from vita_deploy.runtime.backends import backend_graphs, backend_mask_features

            self.graphs = backend_graphs(backend, export, device)
            self.mask_features = backend_mask_features(backend, export, device)

    def predict(self, path: str):
        from vita_deploy.runtime.backends import infer_file
        from vita_deploy.pipeline.inference import run_video
        from vita_deploy.pipeline.video_io import open_video

        if self.model is not None:  # exactly `vita-deploy infer VIDEO`
            return infer_file(path, self.model, self.device, progress=False)
        detector, vita, cfg = self.graphs  # as infer_file does for an export, with --features auto
        source = open_video(path)
        start = time.perf_counter()
        pred = run_video(source, detector, vita, cfg, mask_features=self.mask_features, features="auto",
                         device=self.device, num_frames=source.num_frames)
        pred.timings["total_s"] = time.perf_counter() - start
        return pred

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        out = {"video_id": [], "status": [], "doc": []}
        for path, video_id in zip(batch["path"], batch["video_id"]):
            video_id = int(video_id)
            try:
                pred = self.predict(str(path))
                doc = {"video": str(path), "video_id": video_id, "height": pred.height, "width": pred.width,
                       "num_frames": pred.num_frames, "results": pred.to_ytvis(video_id), "timings": pred.timings}
                status, text = "ok", json.dumps(doc)
            except Exception as e:  # noqa: BLE001 - one bad video is reported, the others go on
                status, text = f"{type(e).__name__}: {e}", ""
            out["video_id"].append(video_id)
            out["status"].append(status)
            out["doc"].append(text)
        return {k: np.asarray(v, dtype=object if k != "video_id" else np.int64) for k, v in out.items()}


@contextlib.contextmanager
def ray_output_to(log_path: Path) -> Iterator[TextIO]:
    """Inside the block, everything written to file descriptor 2 goes to `log_path`; yields a stream to the
    terminal for this process's own messages (the progress bar, per-video errors).

    Ray's C++ core writes its start-up and actor warnings ("Failed to determine local IP via external
    connectivity", constructor-argument notes) to descriptor 2, and its Python loggers (configured again when a
    dataset executes) to `sys.stderr`: logger levels cannot silence them, the descriptor can."""
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 2)
    terminal = os.fdopen(terminal_fd, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                         errors="backslashreplace")
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        terminal.flush()
        os.dup2(terminal_fd, 2)
        terminal.close()


def _init_ray(ray, address: str | None, num_cpus: int | None) -> None:
    import logging

    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=OBJECT_STORE_BYTES,
                 include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows one bar over videos
    ctx.print_on_execution_start = False


def write_index(out: Path, jobs: list[VideoJob], failed: dict[int, str], with_results: bool) -> None:
    """DIR/videos.json (video_id -> path, status, per-video JSON) from what is on disk now; with
    `with_results` also DIR/results.json (all finished videos' results in one list)."""
    videos_dir = out / "videos"
    results, index = [], []
    for j in jobs:
        per_video = videos_dir / f"{j.name}.json"
        if j.video_id not in failed and per_video.is_file():
            if with_results:
                results += json.loads(per_video.read_text())["results"]
            index.append({"video_id": j.video_id, "video": j.path, "status": "ok", "json": f"videos/{j.name}.json"})
        else:
            index.append({"video_id": j.video_id, "video": j.path, "status": failed.get(j.video_id, "not run")})
    if with_results:
        atomic_write_text(out / "results.json", json.dumps(results))
    atomic_write_text(out / "videos.json", json.dumps(index, indent=1))


def run_batch(jobs: list[VideoJob], out: Path, *, backend: str = "torch", export: str | None = None,
              checkpoint: str | None = None, config: str | None = None, device: str = "cpu", actors: int = 2,
              cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0, address: str | None = None,
              num_cpus: int | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Run the jobs not yet done on an actor pool; write per-video JSON as results arrive and the combined files
    at the end. Returns {"done", "skipped", "failed": {path: error}, "seconds", "ray_init_s"}."""
    from tqdm import tqdm

    videos_dir = out / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    done = {j.video_id for j in jobs if resume and (videos_dir / f"{j.name}.json").is_file()}
    todo = [j for j in jobs if j.video_id not in done]
    by_id = {j.video_id: j for j in jobs}
    failed: dict[int, str] = {}
    start = time.perf_counter()
    ray_init_s = None
    write_index(out, jobs, failed, with_results=True)  # from the start, never a previous run's list
    if todo:
        import ray

        with ray_output_to(out / "ray.log") as terminal, contextlib.ExitStack() as stack:
            # ray.init inside: an interrupt during start-up still shuts the local cluster down
            stack.callback(ray.shutdown)
            _init_ray(ray, address, num_cpus)
            ray_init_s = time.perf_counter() - start
            ds = ray.data.from_items([{"path": j.path, "video_id": j.video_id} for j in todo],
                                     override_num_blocks=len(todo))
            # One video per actor at a time: a short video never queues behind a long one on a busy actor, so
            # each result arrives (and is written) as soon as its video ends.
            pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1)
            ds = ds.map_batches(VideoPredictor, batch_size=1, compute=pool,
                                fn_constructor_kwargs={"backend": backend, "export": export, "checkpoint": checkpoint,
                                                       "config": config, "device": device,
                                                       "threads": max(1, int(cpus_per_actor))},
                                num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
            bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress, file=terminal)
            for row in ds.iter_rows():
                job = by_id[int(row["video_id"])]
                if row["status"] == "ok":
                    atomic_write_text(videos_dir / f"{job.name}.json", row["doc"])
                else:
                    failed[job.video_id] = row["status"]
                    bar.write(f"error: {job.path}: {row['status']}", file=terminal)
                write_index(out, jobs, failed, with_results=False)  # this video's status, as it completes
                bar.update(1)
                bar.set_postfix(failed=len(failed))
            bar.close()
    write_index(out, jobs, failed, with_results=True)
    return {"done": len(todo) - len(failed), "skipped": len(done),
            "failed": {by_id[i].path: e for i, e in failed.items()}, "seconds": time.perf_counter() - start,
            "ray_init_s": ray_init_s}


if __name__ == "__main__":  # `python -m vita_deploy.batch`: the earlier spelling of `vita-deploy batch`
    from vita_deploy.commands.batch import main

    sys.exit(main(prog="python -m vita_deploy.batch"))
