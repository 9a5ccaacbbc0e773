"""Triton serving commands.

    vita-deploy serve export-repo --export DIR --out REPO [--backend python-ort|onnxruntime|tensorrt]
        writes a Triton model repository (frame_detector, vita_head, vita_video BLS) for one export; each
        config.pbtxt is validated against Triton's ModelConfig schema. An existing REPO needs --overwrite.
        python-ort runs with the pip-installed server (python backend only); onnxruntime/tensorrt need NVIDIA's
        tritonserver container (and vita_deploy installed in its Python for the vita_video BLS).
    vita-deploy serve run --repo REPO [--http-port 8000] [--grpc-port 8001]
        runs the tritonserver bundled in the nvidia-pytriton wheel on 127.0.0.1 until Ctrl-C.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time

from vita_deploy.commands import cli
from vita_deploy.serve.repository import BACKENDS, RepoOptions, export_repository
from vita_deploy.serve.server import TritonServer


def build_parser(prog: str = "vita-deploy serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export-repo", help="write a Triton model repository for an export")
    e.add_argument("--export", required=True, type=cli.existing_dir, help="export folder (manifest.json) from `vita-deploy export`")
    e.add_argument("--out", required=True, help="model repository folder to write")
    e.add_argument("--backend", choices=BACKENDS, default="python-ort",
                   help="graph models: python-ort (python backend + ONNX Runtime, CPU; the pip-installed server), "
                        "onnxruntime or tensorrt (NVIDIA's container, GPU)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing repository written by export-repo")
    e.add_argument("--video-instances", type=cli.positive_int, default=2, help="vita_video BLS instances (videos at once)")
    e.add_argument("--detector-instances", type=cli.positive_int, default=1, help="instances of each graph model")
    e.add_argument("--queue-delay-us", type=cli.nonnegative_int, default=2000, help="detector dynamic-batching queue delay")
    e.add_argument("--ort-threads", type=cli.nonnegative_int, default=0, help="python-ort: ONNX Runtime threads (0: default)")
    e.add_argument("--engine-dir", type=cli.existing_dir, help="tensorrt: folder of the built engines (default: the export folder)")
    r = sub.add_parser("run", help="run the bundled tritonserver on 127.0.0.1 with a repository")
    r.add_argument("--repo", required=True, type=cli.existing_dir, help="model repository (from export-repo --backend python-ort)")
    r.add_argument("--http-port", type=int, default=8000)
    r.add_argument("--grpc-port", type=int, default=8001)
    return p


def _run(args) -> int:
    server = TritonServer(args.repo, http_port=args.http_port, grpc_port=args.grpc_port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.start()
        print(f"tritonserver ready in {server.start_s:.2f} s: HTTP {server.http_url}, gRPC {server.grpc_url} "
              f"(log {server.log_path}); Ctrl-C stops it", file=sys.stderr)
        while server.alive():
            time.sleep(0.5)
        print(f"error: tritonserver exited with code {server.process.returncode}:\n{server.log_tail()}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy serve") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.command == "export-repo":
        options = RepoOptions(args.backend, args.detector_instances, args.video_instances, args.queue_delay_us,
                              args.ort_threads, args.engine_dir)
        record = export_repository(args.export, args.out, options, overwrite=args.overwrite)
        print(f"wrote the Triton model repository {args.out} ({', '.join(record['models'])}; backend "
              f"{args.backend}) for the export {args.export}", file=sys.stderr)
        return 0
    return _run(args)
