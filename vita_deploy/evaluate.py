"""Evaluate YouTube-VIS results locally.

    python -m vita_deploy.evaluate --gt valid.json --results results.json [--out metrics.json]

Prints AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100 (percent; -1 where there is no ground truth).
Bad inputs print the problem and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vita_deploy.data.ytvis_json import YTVISFormatError
from vita_deploy.evaluation import YTVISResultsError, evaluate_ytvis, format_metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vita_deploy.evaluate",
                                description="YouTube-VIS metrics of a results file against a labelled GT file.")
    p.add_argument("--gt", required=True, help="ground-truth JSON with annotations (YouTube-VIS 2019/2021 layout)")
    p.add_argument("--results", required=True,
                   help="results JSON: a list of {video_id, category_id, score, segmentations (one RLE or null "
                        "per frame)}")
    p.add_argument("--out", help="also write the metrics as JSON to this path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = evaluate_ytvis(args.gt, args.results)
    except (YTVISFormatError, YTVISResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_metrics(metrics))
    if args.out:
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n")
        except OSError as e:
            print(f"error: cannot write {args.out}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
