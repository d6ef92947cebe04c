#!/usr/bin/env bash
# One prepared GPU call for the paper's CIFAR-FS comparison rows (issue #6): TGR and the baselines, each meta-trained
# for a time limit, selected on meta-val and meta-tested once (1- and 5-shot, 600 episodes), then `dfmeta report`.
# The zoo-only rows of Table 1 (finetune best-model average ota: `dfmeta evaluate`, no meta-training, no time
# limit) are methods of this script too.
# Not yet run on a GPU. Run from the repository root; results under $OUT.
#   prerequisites (on the CPU machine, carried as .carry; see benchmarks/gpu_fast_tgr.sh):
#     dfmeta data prepare --dataset cifar-fs --splits test --out .carry/data
#     dfmeta data prepare --dataset cifar-fs --splits val --max-per-class 200 --out .carry/data
#     python -c "from dfmeta.zoo.authors import import_authors_zoo as f; f('../shared/zoos/cifar-fs-conv4', '.carry/zoo')"
#   for maml-real (MAML on the real meta-train images, the reference point) also a train split that fits the carry:
#     dfmeta data prepare --dataset cifar-fs --splits train --max-per-class 120 --out .carry/data   (about 20 MiB)
#   then: bash benchmarks/gpu_paper_rows.sh SECONDS_PER_METHOD [METHOD ...]   (default 90 s; tgr purer bidf-mkd dro)
#   all of Table 1's CIFAR-FS rows: ... SECONDS finetune best-model average ota dro purer bidf-mkd tgr
#   TGR with another replay mix (README, "replay mixes"): tgr:MIX, e.g. ... 240 tgr tgr:within tgr:pooled
#   (each the same time limit, seed and flags, so the report pairs them head to head on meta-val)
# A time-limited run can be continued later with `--resume RUN_DIR`: the run directories come back whole (checkpoints
# included) as $OUT/runs.tar.gz.part-aa, -ab, ... (15 MiB pieces); `cat runs.tar.gz.part-* | tar xz` restores them.
# DEVICE=cpu runs the same plumbing on a CPU (add small settings through EXTRA="--rec-steps 2 ...", and
# EVAL_EXTRA="--episodes 20" for the zoo-only rows).
# A step that fails is reported and the script goes on.
set -uo pipefail
LIMIT=${1:-90}; shift || true
METHODS=${*:-tgr purer bidf-mkd dro}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/out}
RUNS=${RUNS:-/tmp/runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 DFMETA_DATA=${DFMETA_DATA:-.carry/data} DFMETA_CACHE=/tmp/dfmeta-cache PYTHONPATH=$PWD
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
for m in $METHODS; do
  case "$m" in
    finetune|best-model|average|ota)
      echo "== $m, CIFAR-FS, reference zoo, 1- and 5-shot (no meta-training)"
      # shellcheck disable=SC2086
      python -m dfmeta.cli evaluate --dataset cifar-fs --method "$m" --zoo .carry/zoo --device "$DEVICE" \
        --out-dir "$RUNS" ${EVAL_EXTRA:-} || echo "!! $m failed (rc $?)"
      continue ;;
  esac
  echo "== $m, CIFAR-FS 1-shot setting, reference zoo, $LIMIT s of meta-training"
  case "$m" in
    tgr) cmd=(train --small-groups merge --zoo .carry/zoo) ;;
    tgr:*) cmd=(train --small-groups merge --zoo .carry/zoo --replay-mix "${m#tgr:}") ;;
    maml-real) cmd=(baseline maml-real) ;;  # no zoo: the real meta-train split (.carry/data/.../train.npz)
    *) cmd=(baseline "$m" --zoo .carry/zoo) ;;
  esac
  # shellcheck disable=SC2086
  timeout $((LIMIT + 150)) python -m dfmeta.cli "${cmd[@]}" --preset cifar-fs-1shot --device "$DEVICE" \
    --out-dir "$RUNS" --time-limit "$LIMIT" ${EXTRA:-} || echo "!! $m failed (rc $?)"
done
python -m dfmeta.cli report "$RUNS" --out "$RUNS/report.md" || true
for run in "$RUNS"/*/; do
  [ -f "$run/metrics.jsonl" ] && python benchmarks/epoch_times.py "$run" 2>/dev/null
done | tee "$OUT/epoch_times.md"
tar czf - -C "$RUNS" --exclude=grouping-tasks . | split -b 15m - "$OUT/runs.tar.gz.part-"
