#!/usr/bin/env bash
# One prepared GPU call for the paper's CIFAR-FS comparison rows and the H100 zoo-build throughput (issue #3).
# Not yet run on a GPU (written in a session without a device). Run from the repository root; results under $OUT.
#   prerequisites (on the CPU machine, carried as .carry; see benchmarks/gpu_cifar_fs.sh):
#     dfmeta data prepare --dataset cifar-fs --splits test --out .carry/data
#     dfmeta data prepare --dataset cifar-fs --splits val --max-per-class 200 --out .carry/data
#     dfmeta zoo import --src ../shared/zoos/cifar-fs-conv4 --dst .carry/zoo
#   then: bash benchmarks/gpu_paper_rows.sh SECONDS_PER_METHOD [METHOD ...]   (default 90 s; tgr purer bidf-mkd dro)
# Each method meta-trains until its time limit, is selected on meta-val and meta-tested once (1- and 5-shot, 600
# episodes). A step that fails is reported and the script goes on.
set -uo pipefail
LIMIT=${1:-90}; shift || true
METHODS=${*:-tgr purer bidf-mkd dro}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DFMETA_DATA=.carry/data DFMETA_CACHE=/tmp/dfmeta-cache PYTHONPATH=$PWD
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
echo "== zoo build throughput (100 teachers x 60 epochs target: 2 min)"
timeout 200 python benchmarks/bench_zoo_build.py --device cuda --teachers 8 32 100 | tee "$OUT/bench_zoo_build.md"
for m in $METHODS; do
  echo "== $m, CIFAR-FS 1-shot setting, reference zoo, $LIMIT s of meta-training"
  if [ "$m" = tgr ]; then cmd=(train); else cmd=(baseline "$m"); fi
  timeout $((LIMIT + 150)) python -m dfmeta.cli "${cmd[@]}" --preset cifar-fs-1shot --zoo .carry/zoo --device cuda \
    --out-dir "/tmp/runs/$m" --val-every 5 --time-limit "$LIMIT" || echo "!! $m failed (rc $?)"
  mkdir -p "$OUT/runs" && cp -r /tmp/runs/"$m"/* "$OUT/runs/" 2>/dev/null
  find "$OUT/runs" -name "*.pt" -delete
done
python -m dfmeta.cli report "$OUT/runs" --out "$OUT/report.md" || true
