"""Evaluate YouTube-VIS results locally.

    vita-deploy evaluate --gt valid.json --results results.json [--out metrics.json]

Prints AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100 (percent; -1 where there is no ground truth).
Bad inputs print the problem and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from vita_deploy.commands import cli
from vita_deploy.evaluation import evaluate_ytvis, format_metrics
from vita_deploy.files import atomic_write_text, refuse_clobber


def build_parser(prog: str = "vita-deploy evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog,
                                description="YouTube-VIS metrics of a results file against a labelled GT file.")
    p.add_argument("--gt", type=cli.existing_file, required=True,
                   help="ground-truth JSON with annotations (YouTube-VIS 2019/2021 layout)")
    p.add_argument("--results", type=cli.existing_file, required=True,
                   help="results JSON: a list of {video_id, category_id, score, segmentations (one RLE or null "
                        "per frame)}")
    p.add_argument("--out", type=cli.output_file, help="also write the metrics as JSON to this path")
    return p


@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy evaluate") -> int:
    args = build_parser(prog).parse_args(argv)
    refuse_clobber({"--out": args.out}, {"--gt": args.gt, "--results": args.results})
    metrics = evaluate_ytvis(args.gt, args.results)
    print(format_metrics(metrics))
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m vita_deploy.commands.evaluate"))
