"""The speed stage's predicted ranking, recomputed from committed outputs: the quickstart's tree
grid replay rows priced by the machine's cost profile (no decoding, no timing: a few seconds).

    python benchmarks/speed_grid_ranking.py --out docs/results/speed-default/grid-ranking.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from taps_ray.evaluation.report import write_atomic
from taps_ray.evaluation.results import read_rows
from taps_ray.evaluation.speed_select import rank_predicted
from taps_ray.speed.profile import load_profile

RUN = Path("docs/results/speed-default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(RUN / "grid"), help="replay rows of the tree grid")
    parser.add_argument("--profile", default=str(RUN / "profile.json"))
    parser.add_argument("--out", default=str(RUN / "grid-ranking.json"))
    args = parser.parse_args()
    ranked = rank_predicted(read_rows([args.grid]), load_profile(args.profile))
    out = {
        "grid": args.grid, "profile": args.profile,
        "ranking": [{"key": c.key, "predicted_speedup": round(c.predicted_speedup, 4),
                     "mean_tau": round(c.mean_tau, 4)} for c in ranked],
    }
    write_atomic(Path(args.out), (json.dumps(out, indent=1) + "\n").encode())
    for c in out["ranking"]:
        print(f"{c['predicted_speedup']:.2f}x  tau {c['mean_tau']:.2f}  {c['key']}")


if __name__ == "__main__":
    main()
