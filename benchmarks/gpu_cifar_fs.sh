#!/usr/bin/env bash
# One prepared GPU session for CIFAR-FS (run from the repository root; results under $OUT).
#   prerequisites (on the CPU machine, carried as .carry):
#     dfmeta data prepare --dataset cifar-fs --splits test --out .carry/data
#     dfmeta data prepare --dataset cifar-fs --splits val --max-per-class 200 --out .carry/data
#     dfmeta zoo import --src ../shared/zoos/cifar-fs-conv4 --dst .carry/zoo
#   then: bash benchmarks/gpu_cifar_fs.sh SECONDS   (meta-training time limit; the run is ended, selected and tested there)
set -uo pipefail
LIMIT=${1:-300}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DFMETA_DATA=.carry/data DFMETA_CACHE=/tmp/dfmeta-cache PYTHONPATH=$PWD
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== evaluation benchmark (600 episodes)"
python benchmarks/bench_evaluate.py --device cuda --episodes 600 --shots 5 1 | tee "$OUT/bench_evaluate.md"
echo "== Finetune baseline, CIFAR-FS meta-test"
python -m dfmeta.cli evaluate --dataset cifar-fs --method finetune --device cuda --out-dir /tmp/runs
echo "== TGR, CIFAR-FS, reference zoo, up to $LIMIT s of meta-training"
python -m dfmeta.cli train --preset cifar-fs-1shot --zoo .carry/zoo --device cuda --out-dir /tmp/runs \
  --epochs 1000 --val-every 20 --time-limit "$LIMIT"
python - "$OUT" <<'PY'
import json, sys, glob, statistics as st
for f in glob.glob("/tmp/runs/*tgr*/metrics.jsonl"):
    rows = [json.loads(l) for l in open(f)]
    ep = [r for r in rows if "epoch" in r]
    for k in ("t_recover", "t_igr", "t_replay", "replay_batches"):
        v = [r[k] for r in ep[1:]] or [r[k] for r in ep]
        print(f"{k}: median {st.median(v):.3f}, mean {st.mean(v):.3f} over {len(v)} epochs")
PY
for f in config.json metrics.jsonl results.json groups.json; do cp /tmp/runs/*tgr*/$f "$OUT/tgr_$f"; done
cp /tmp/runs/*finetune*/results.json "$OUT/finetune_results.json"
