"""`vita-deploy batch VIDEOS --out DIR`: batch inference over many videos with Ray Data (see vita_deploy/batch.py
for the outputs, --resume and the cluster)."""
from __future__ import annotations

import argparse
import sys

from vita_deploy.batch import list_videos, run_batch
from vita_deploy.batch import __doc__ as BATCH_DOC
from vita_deploy.commands import cli
from vita_deploy.files import prepare_output_dir


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy batch") -> int:
    p = argparse.ArgumentParser(prog=prog, description=BATCH_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", type=cli.existing_path, help="folder of videos / frame folders, or a list file")
    p.add_argument("--out", required=True, help="output folder (per-video JSON, results.json, videos.json)")
    p.add_argument("--address", help="an existing Ray cluster (`auto`, `ray://host:10001`); default: a local one")
    p.add_argument("--actors", type=cli.positive_int, default=2, help="actors, each holding one model")
    p.add_argument("--cpus-per-actor", type=cli.positive_float, default=1.0, help="CPUs (and threads) per actor")
    p.add_argument("--gpus-per-actor", type=cli.nonnegative_float, default=0.0,
                   help="GPUs per actor (fractions share a GPU); > 0 runs the model on CUDA")
    p.add_argument("--num-cpus", type=cli.positive_int, help="CPUs of the local cluster (default: all)")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default="torch")
    p.add_argument("--export", type=cli.existing_dir, help="export folder for --backend onnxruntime/tensorrt")
    p.add_argument("--checkpoint", type=cli.existing_file, help="--backend torch: checkpoint (default: shipped tiny)")
    p.add_argument("--config", type=cli.config_name, help="--backend torch: config for official/random weights")
    p.add_argument("--resume", action="store_true", help="continue in DIR: skip videos already done")
    p.add_argument("--overwrite", action="store_true", help="rerun every video in an existing DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.backend != "torch" and not a.export:
        p.error(f"--backend {a.backend} needs --export DIR (made by `vita-deploy export`)")
    if a.backend == "tensorrt" and not a.gpus_per_actor:
        p.error("TensorRT engines run on a GPU: pass --gpus-per-actor (e.g. 1)")
    if a.resume and a.overwrite:
        p.error("--resume and --overwrite exclude each other")
    jobs = list_videos(a.videos)
    out = prepare_output_dir(a.out, resume=a.resume, overwrite=a.overwrite, what="--out folder",
                             inputs={"VIDEOS": a.videos, "--export": a.export})
    if a.overwrite:  # nothing of the previous run may look done if this one is interrupted
        for f in [*(out / "videos").glob("*.json"), out / "results.json", out / "videos.json"]:
            f.unlink(missing_ok=True)
    device = "cuda" if a.gpus_per_actor else "cpu"
    summary = run_batch(jobs, out, backend=a.backend, export=a.export, checkpoint=a.checkpoint, config=a.config,
                        device=device, actors=a.actors, cpus_per_actor=a.cpus_per_actor,
                        gpus_per_actor=a.gpus_per_actor, address=a.address, num_cpus=a.num_cpus, resume=a.resume,
                        progress=not a.no_progress)
    print(f"{summary['done']} video(s) done, {summary['skipped']} skipped (done before), {len(summary['failed'])} "
          f"failed in {summary['seconds']:.1f} s"
          + (f" (Ray start {summary['ray_init_s']:.1f} s)" if summary["ray_init_s"] is not None else "")
          + f"; wrote {out / 'results.json'}", file=sys.stderr)
    if summary["failed"]:
        for path, err in summary["failed"].items():
            print(f"error: {path}: {err}", file=sys.stderr)
        print(f"error: {len(summary['failed'])} of {len(jobs)} video(s) failed (listed in {out / 'videos.json'}): "
              "fix or remove them and rerun with --resume", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m vita_deploy.commands.batch"))
