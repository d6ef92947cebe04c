#!/usr/bin/env bash
# TGR with and without the background recovery (--rec-overlap): wall time, per-epoch stages, same numbers.
#   bash benchmarks/bench_overlap.sh [EPOCHS] [DEVICE]     (from the repository root)
# Default: the CPU size of docs/results/cpu-2026-11-27-matched.md (reference zoo at .carry/zoo, CIFAR-FS meta-val
# from $DFMETA_DATA or ../shared/data, one torch thread), 6 epochs, validation every 2 (300 episodes); the two
# runs go one after the other. Extra `dfmeta train` flags in FLAGS (e.g. FLAGS="--preset cifar-fs-1shot" on a GPU).
set -euo pipefail
EPOCHS=${1:-6}
DEVICE=${2:-cpu}
OUT=${OUT:-/tmp/bench_overlap}
ZOO=${ZOO:-.carry/zoo}
FLAGS=${FLAGS:---grouping off --rec-nf 16 --rec-steps 30 --rec-per-class 16 --val-episodes 300 --threads 1}
rm -rf "$OUT"; mkdir -p "$OUT"
declare -A WALL
for mode in off on; do
  t0=$(date +%s.%N)
  python -m dfmeta.cli train --dataset cifar-fs --zoo "$ZOO" --epochs "$EPOCHS" --val-every 2 --device "$DEVICE" --seed 0 \
    --no-defer-test --shots 1 --episodes 100 $FLAGS --rec-overlap "$mode" --out-dir "$OUT/$mode" > "$OUT/$mode.log" 2>&1 \
    || { tail -5 "$OUT/$mode.log"; exit 1; }
  WALL[$mode]=$(python -c "import time; print(f'{time.time() - $t0:.1f}')")
done
python - "$OUT" "${WALL[off]}" "${WALL[on]}" <<'PY'
import json, sys
from pathlib import Path
out, wall = Path(sys.argv[1]), {"off": float(sys.argv[2]), "on": float(sys.argv[3])}
def rows(mode):
    (d,) = [p for p in (out / mode).iterdir() if p.is_dir()]
    return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
r = {m: rows(m) for m in wall}
ep = {m: [x for x in r[m] if "t_recover" in x] for m in wall}
print("| rec_overlap | command wall s | epochs | recovery (wait) s/epoch | IGR s/epoch | replay s/epoch | epoch s | "
      "validation s |")
print("|---|---|---|---|---|---|---|---|")
for m in wall:
    e = ep[m]
    mean = lambda k: sum(x[k] for x in e) / len(e)  # noqa: E731
    print(f"| {m} | {wall[m]:.1f} | {len(ep[m])} | {mean('t_recover'):.2f} | {mean('t_igr'):.2f} | "
          f"{mean('t_replay'):.2f} | {mean('t_recover') + mean('t_igr') + mean('t_replay'):.2f} | "
          f"{sum(x.get('t_val', 0) for x in r[m]):.1f} |")
same = lambda m: [{k: v for k, v in x.items() if not k.startswith(("t_", "bg_"))} for x in r[m]]  # noqa: E731
print("\nsame metrics (losses, replay, meta-val, meta-test) with and without:", same("off") == same("on"))
PY
