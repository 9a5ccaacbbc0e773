"""`vita-deploy data`: write a synthetic YouTube-VIS dataset (vita_deploy/data/synthetic.py), or `--check DIR` a
YouTube-VIS-format folder before training on it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vita_deploy.commands import cli
from vita_deploy.data.synthetic import __doc__ as SYNTHETIC_DOC
from vita_deploy.data.synthetic import generate_split
from vita_deploy.data.ytvis_json import check_dataset
from vita_deploy.errors import OutputClobberError


def split_name(text: str) -> str:
    """A split name: a plain folder/file stem such as train or valid (no path separators)."""
    if not text or text in (".", "..") or "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a split name: use a plain name such as train or valid")
    return text



@cli.command
def main(argv: list[str] | None = None, prog: str = "vita-deploy data") -> int:
    p = argparse.ArgumentParser(prog=prog, description=SYNTHETIC_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", type=cli.existing_dir, metavar="DIR",
                   help="instead of writing data, check a YouTube-VIS folder for training (train.json, valid.json "
                        "if present, every listed frame under <split>/JPEGImages) and print what it holds")
    p.add_argument("--out", type=cli.output_dir, help="dataset folder (required unless --check)")
    p.add_argument("--videos", type=cli.positive_int, help="videos in the split (required unless --check)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0)
    p.add_argument("--split", type=split_name, default="train")
    p.add_argument("--val-videos", type=cli.nonnegative_int, default=0,
                   help="also write a disjoint 'valid' split with annotations")
    p.add_argument("--min-frames", type=cli.positive_int, default=6)
    p.add_argument("--max-frames", type=cli.positive_int, default=36)
    p.add_argument("--overwrite", action="store_true", help="replace splits that already exist in --out")
    a = p.parse_args(argv)
    if a.check:
        for line in check_dataset(a.check):
            print(line)
        print(f"ok: train with `vita-deploy train --init model_final.pth --config r50 --data {a.check} --out RUN`")
        return 0
    if a.out is None or a.videos is None:
        p.error("writing a synthetic data set needs --out DIR and --videos N (or pass --check DIR to check one)")
    if a.max_frames < a.min_frames:
        p.error(f"--min-frames {a.min_frames} is above --max-frames {a.max_frames}: need --min-frames <= --max-frames")
    splits = [a.split] + (["valid"] if a.val_videos else [])
    out = Path(a.out)
    existing = [str(x) for sp in splits for x in (out / f"{sp}.json", out / sp) if x.exists()]
    if existing and not a.overwrite:
        raise OutputClobberError(f"the dataset folder already holds {', '.join(existing)}", out,
                                 "pass --overwrite to replace those splits, or another --out")
    paths = [generate_split(a.out, a.split, a.videos, a.seed, a.min_frames, a.max_frames)]
    if a.val_videos:
        # A different seed stream (seed + 10^6) keeps the valid split disjoint from train.
        paths.append(generate_split(a.out, "valid", a.val_videos, a.seed + 1_000_000, a.min_frames, a.max_frames))
    for path in paths:
        d = json.loads(path.read_text())
        frames = sum(v["length"] for v in d["videos"])
        print(f"wrote {path}: {len(d['videos'])} videos, {frames} frames, {len(d['annotations'])} instances")
    return 0



if __name__ == "__main__":
    import sys

    sys.exit(main(prog="python -m vita_deploy.commands.data"))
