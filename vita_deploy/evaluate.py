"""Evaluate YouTube-VIS results locally: `python -m vita_deploy.evaluate --gt valid.json --results results.json`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vita_deploy.data.ytvis_json import YTVISFormatError
from vita_deploy.evaluation import YTVISResultsError, evaluate_ytvis


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gt", required=True, help="ground-truth JSON with annotations")
    p.add_argument("--results", required=True, help="results JSON (list of video_id/category_id/score/segmentations)")
    p.add_argument("--out", help="write the metrics as JSON here")
    args = p.parse_args(argv)
    try:
        metrics = evaluate_ytvis(args.gt, args.results)
    except (YTVISFormatError, YTVISResultsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(" | ".join(f"{k:>5s}" for k in metrics))
    print(" | ".join(f"{v:5.1f}" for v in metrics.values()))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
