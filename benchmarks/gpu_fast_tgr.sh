#!/usr/bin/env bash
# One prepared GPU call for issue #5 (fast TGR) and the H100 zoo-build throughput (issue #3). Results under $OUT.
#   prerequisites on the CPU machine (carried as .carry; ../shared does not travel):
#     dfmeta data prepare --dataset cifar-fs --splits test --out .carry/data
#     dfmeta data prepare --dataset cifar-fs --splits val --max-per-class 200 --out .carry/data
#     python -c "from dfmeta.zoo.authors import import_authors_zoo as f; f('../shared/zoos/cifar-fs-conv4', '.carry/zoo')"
#   then: bash benchmarks/gpu_fast_tgr.sh BUDGET_SECONDS   (the whole script; default 540)
#   STEPS="1 2 2b 3 4" picks steps (5: the Fisher-probe study at paper-size recovery, 6: TGR with and without the
#   background recovery, bench_overlap.sh, OV_EPOCHS epochs each, default 32 (4 batches of 8), extra train flags in OV_FLAGS;
#   neither in the default); VARIANTS="name|name" limits step 2's variants (bench_recover.py VARIANTS);
#   TRAIN_FLAGS="--rec-compile on ..." adds `dfmeta train` options to a new run of step 4.
#   RESUME=path/to/run_dir (carried) continues that run in step 4 instead of starting one. The run directory comes
#   back whole, checkpoint included, as $OUT/tgr_run.tar.gz.part-aa, -ab, ... (15 MiB pieces, the size limit of a
#   returned file): `cat tgr_run.tar.gz.part-* | tar xz` restores it for a later RESUME (KEEP_CKPT=0 leaves it out);
#   $OUT/tgr_run_small.tar.gz holds the run's records alone (config, metrics, groups, results, report).
#   DEFER_TEST=1 trains without the meta-test split (--defer-test): a full run in several calls, each carrying the
#   zoo, the val split and the run (about 58 MB with the 37 MB memory bank), none the 37 MB test split:
#     STEPS=4 DEFER_TEST=1 [RESUME=.carry/run/<run>] bash benchmarks/gpu_fast_tgr.sh 560   # repeat to 1000 epochs
#     STEPS=4 RESUME=.carry/run/<run> bash benchmarks/gpu_fast_tgr.sh 200   # last call: zoo, val, test, the run
#   (a finished run's checkpoint leaves the bank out, so the last call fits). No interim meta-test is taken.
# Steps: (1) the fast recovery paths against the reference on the GPU (pytest), (2) recovery variants and
# several-epoch batching (bench_recover.py, picks the fastest), (3) zoo-build throughput, (4) a CIFAR-FS 1-shot TGR
# run from the reference zoo with the fastest settings, time-limited to what the budget leaves (meta-val selection,
# one meta-test at 1 and 5 shots), its per-stage times (epoch_times.py) and report. A failing step is reported and
# the script goes on. DEVICE=cpu DRY=1 runs the same plumbing at toy sizes on a CPU.
set -uo pipefail
BUDGET=${1:-540}
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
DEVICE=${DEVICE:-cuda}
STEPS=" ${STEPS:-1 2 2b 3 4} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
VARIANT_ARGS=(all)
if [ -n "${VARIANTS:-}" ]; then IFS='|' read -r -a VARIANT_ARGS <<< "$VARIANTS"; fi
OUT=${OUT:-/tmp/out}
RUNS=${RUNS:-/tmp/runs}
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1 DFMETA_DATA=${DFMETA_DATA:-.carry/data} DFMETA_CACHE=/tmp/dfmeta-cache PYTHONPATH=$PWD
exec > >(tee "$OUT/log.txt") 2>&1
if [ "${DRY:-0}" = 1 ]; then
  BENCH=(--steps 3 --per-class 4 --nf 16 --prefetch 1 2 --draws 2)
  ZOO=(--teachers 2 --epochs 1 --max-sequential 1)
  TRAIN=(--rec-steps 2 --rec-per-class 2 --replay-queries 1 --rec-nf 8 --val-every 2 --val-episodes 5 --episodes 5 --zoo-size 12
         --meta-batch 2 --replay-max-batches 1 --fisher-samples 4)
  MARGIN=${MARGIN:-30}
  PROBE=(--steps 2 --nf 8 --per-class 2)
  OV_EPOCHS=3
  OV_FLAGS="--grouping off --rec-steps 2 --rec-per-class 2 --replay-queries 1 --rec-nf 8 --val-episodes 5 --zoo-size 12 --meta-batch 2 --replay-max-batches 1 --rec-prefetch 1"
else
  BENCH=(--prefetch ${PREFETCH:-1 4 8 16} --profile ${PROFILE:-20} --draws 32)
  ZOO=(--teachers 8 32 100 --epochs 2)
  TRAIN=()
  MARGIN=${MARGIN:-130}
  PROBE=(--steps 200 --nf 64 --per-class 30)
  OV_EPOCHS=${OV_EPOCHS:-32}
  OV_FLAGS="--grouping off --val-episodes 600 ${OV_FLAGS:-}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

if want 1; then
echo "== 1. fast paths against the plain reference path on this device ($(left) s left)"
timeout ${STEP1_TIMEOUT:-150} python -m pytest -q -p no:cacheprovider tests/test_recover.py tests/test_cuda_graph.py \
  tests/test_trainer.py -k "cuda or bf16 or batching or prefetch or upsample or compile" || echo "!! step 1 failed (rc $?)"
fi

if want 2; then
echo "== 2. recovery variants, one epoch (4 teachers x 150 images x 200 steps) ($(left) s left)"
timeout 150 python benchmarks/bench_recover.py --device "$DEVICE" --json "$OUT/recover_best.json" "${BENCH[@]}" \
  --variants "${VARIANT_ARGS[@]}" | tee "$OUT/bench_recover.md" || echo "!! step 2 failed"
fi
FLAGS=$(python - "$OUT/recover_best.json" <<'EOF' 2>/dev/null
import json, sys
b = json.load(open(sys.argv[1]))
print(f"--rec-amp {b['amp']} --rec-graph {b['graph']} --rec-batching {b['batching']} "
      f"--rec-channels-last {b['channels_last']} --rec-compile {b.get('compile', 'off')} --rec-prefetch {b['prefetch']}")
EOF
)
echo "fastest recovery settings: ${FLAGS:-none measured, the defaults}"

if want 2b; then
echo "== 2b. IGR step and one replay meta-batch ($(left) s left)"
timeout 60 python benchmarks/bench_meta_step.py --device "$DEVICE" | tee "$OUT/bench_meta_step.md" || echo "!! step 2b failed"
fi

if want 3; then
echo "== 3. zoo build throughput (target: 100 Conv4 teachers x 60 epochs within 2 min) ($(left) s left)"
timeout 100 python benchmarks/bench_zoo_build.py --device "$DEVICE" "${ZOO[@]}" | tee "$OUT/bench_zoo_build.md" \
  || echo "!! step 3 failed"
fi
if want 5; then
echo "== 5. Fisher probes on paper-size recovered tasks (docs/results/cpu-2026-12-02-probes.md) ($(left) s left)"
timeout 240 python benchmarks/probe_study.py --zoo .carry/zoo --device "$DEVICE" "${PROBE[@]}" \
  --fisher-labels task probe --fisher-cosine whole layers --probes random:42 random:0 \
  --out "$OUT/probe_study.json" || echo "!! step 5 failed (rc $?)"
fi
if want 6; then
echo "== 6. TGR with and without the background recovery (--rec-overlap), $OV_EPOCHS epochs each ($(left) s left)"
OUT="$OUT/overlap" FLAGS="$OV_FLAGS" timeout 300 bash benchmarks/bench_overlap.sh "$OV_EPOCHS" "$DEVICE" \
  | tee "$OUT/bench_overlap.md" || echo "!! step 6 failed"
fi
want 4 || { echo "== done in $(($(date +%s) - T0)) s"; exit 0; }

LIMIT=$(($(left) - MARGIN))
if [ -n "${RESUME:-}" ]; then
  echo "== 4. TGR, resuming $RESUME for $LIMIT s of meta-training"
  cp -r "$RESUME" "$RUNS/" && cmd=(--resume "$RUNS/$(basename "$RESUME")")
else
  # --time-limit counts meta-training only: the grouping before it and the meta-test after it come on top, within
  # MARGIN (130 s on a GPU; the H200 run of 2026-12-04 spent 70 s grouping and 86 s outside its limit in all)
  echo "== 4. TGR, CIFAR-FS 1-shot setting, reference zoo, $LIMIT s of meta-training (+ grouping and meta-test)"
  cmd=(--preset cifar-fs-1shot --zoo .carry/zoo --out-dir "$RUNS" --small-groups merge $FLAGS "${TRAIN[@]}"
       ${TRAIN_FLAGS:-})
fi
[ "${DEFER_TEST:-0}" = 1 ] && cmd+=(--defer-test) || cmd+=(--no-defer-test)
start=$(date +%s)
# shellcheck disable=SC2086
timeout $((LIMIT + MARGIN - 10)) python -m dfmeta.cli train "${cmd[@]}" --device "$DEVICE" --time-limit "$LIMIT" \
  || echo "!! step 4 failed (rc $?)"
wall=$(($(date +%s) - start))
run=$(ls -d "$RUNS"/*/ 2>/dev/null | head -1)
if [ -n "$run" ]; then
  python benchmarks/epoch_times.py "$run" --wall "$wall" | tee "$OUT/epoch_times.md"
  python -m dfmeta.cli report "$RUNS" --out "$RUNS/report.md" || true
  tar czf "$OUT/tgr_run_small.tar.gz" -C "$RUNS" --exclude='*.pt' --exclude='*.npz' .  # records, without checkpoints
  [ "${KEEP_CKPT:-1}" = 1 ] && tar czf - -C "$RUNS" --exclude=grouping-tasks . | split -b 15m - "$OUT/tgr_run.tar.gz.part-"
fi
echo "== done in $(($(date +%s) - T0)) s"
