"""Per-stage and end-to-end times of a meta-training run, from its metrics.jsonl (the run's own measurements).

    python benchmarks/epoch_times.py RUN_DIR [--wall SECONDS] [--epochs 1000]

Prints a table: mean and median seconds per epoch of each stage the method logs (TGR: t_recover, t_igr, t_replay;
the baselines their own t_* fields; recovery of several epochs together counts once, so the mean is the per-epoch
cost), validation seconds per validation, and the time a run of ``--epochs`` epochs would take at these rates
(validation every val_every epochs, from config.json). With TGR's ``rec_overlap`` the recovery stage is the time
an epoch waited for the background worker; the worker's own seconds (``bg_recover``) are printed below the table.
``--wall``: the measured wall time of the whole command, printed beside the sum of the stages.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dfmeta.config import plain


def main() -> None:
    ap = argparse.ArgumentParser(description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--wall", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=1000)
    a = ap.parse_args()
    run = Path(a.run_dir)
    if not (run / "metrics.jsonl").is_file():
        raise SystemExit(f"{run}: no metrics.jsonl (not a run directory, or no epoch finished)")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    cfg = json.loads((run / "config.json").read_text())
    epochs = [r for r in rows if "epoch" in r and any(k.startswith("t_") and k != "t_val" for k in r)]
    if not epochs:
        raise SystemExit(f"{run / 'metrics.jsonl'}: no epoch rows with timings")
    stages = [k for k in epochs[0] if k.startswith("t_") and k != "t_val"]  # the method's own stages, in its order
    vals = [r["t_val"] for r in rows if "t_val" in r]
    print(f"\nrun: {run.name}, {len(epochs)} epochs, val_every {cfg.get('val_every')}")
    print("| stage | mean s/epoch | median s/epoch |")
    print("|---|---|---|")
    total = 0.0
    for k in stages:
        xs = [r[k] for r in epochs]
        total += statistics.fmean(xs)
        print(f"| {k[2:]} | {statistics.fmean(xs):.3f} | {statistics.median(xs):.3f} |")
    print(f"| **epoch (sum)** | **{total:.3f}** | |")
    bg = [r["bg_recover"] for r in epochs if "bg_recover" in r]
    if bg:
        print(f"| (background recovery: {len(bg)} batches, seconds per epoch off the training path) | "
              f"{sum(bg) / len(epochs):.3f} | |")
    val = statistics.fmean(vals) if vals else 0.0
    if vals:
        print(f"| validation (per validation, {len(vals)} done) | {val:.3f} | {statistics.median(vals):.3f} |")
    every = int(cfg.get("val_every") or 1)
    est = a.epochs * total + (a.epochs // every) * val
    print(f"\nat these rates {a.epochs} epochs with validation every {every}: {est:.0f} s ({est / 60:.1f} min), "
          f"before grouping and the final meta-test")
    if a.wall:
        print(f"measured wall time of the command: {a.wall:.0f} s; stages summed over the epochs run "
              f"(all calls, for a resumed run): "
              f"{sum(sum(r[k] for k in stages) for r in epochs) + sum(vals):.0f} s")


if __name__ == "__main__":
    main()
