"""Eager latency of one frame through the frame detector and through the mask-feature graph (what recompute mode
runs again in its second pass), and of the VITA head over T frame queries.

    python benchmarks/frame_latency.py [--configs tiny r50] [--threads 2] [--frames 36]

Random weights (speed does not depend on them); median of --repeats runs after --warmup runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vita_deploy.benchmark import median_ms  # noqa: E402
from vita_deploy.commands import cli  # noqa: E402
from vita_deploy.config import canonical_config_name, config_names, get_config  # noqa: E402
from vita_deploy.modeling.model import build_model  # noqa: E402
from vita_deploy.pipeline.preprocess import padded_size, shortest_edge_size  # noqa: E402


@cli.command
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", nargs="+", default=["tiny", "r50-ytvis19"], choices=config_names(),
                   type=canonical_config_name)
    p.add_argument("--threads", type=cli.positive_int, default=2)
    p.add_argument("--frames", type=cli.positive_int, default=36, help="T for the VITA head")
    p.add_argument("--repeats", type=cli.positive_int, default=5)
    p.add_argument("--warmup", type=cli.nonnegative_int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for name in a.configs:
        cfg = get_config(name)
        model = build_model(cfg).eval()
        h, w = padded_size(*shortest_edge_size(360, 640, cfg.input.min_size_test, cfg.input.max_size_test))
        x = torch.randn(1, 3, h, w)
        with torch.inference_mode():
            det = median_ms(lambda: model.frame_detector(x), a.repeats, a.warmup)
            mf = median_ms(lambda: model.frame_detector.mask_features(x), a.repeats, a.warmup)
            fq = model.frame_detector(x)[0].repeat(a.frames, 1, 1)
            vita = median_ms(lambda: model.vita_head(fq), a.repeats, a.warmup)
        print(f"{name}: 360x640 frame (padded {h}x{w}): frame detector {det:.1f} ms, mask-feature graph {mf:.1f} ms "
              f"(recompute's graphs: {1 + mf / det:.2f}x keep's); VITA head T={a.frames}: {vita:.1f} ms "
              f"({a.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
