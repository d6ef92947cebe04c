#!/usr/bin/env bash
# The paper's multi-architecture scenario (Table 3) in one command, beside its control: a zoo whose teachers' architectures
# are drawn from Conv4 / ResNet-10 / ResNet-18, and a Conv4 zoo of the same teachers (same seed: the same classes,
# the same training recipe), each grouped once by `dfmeta group` and meta-trained by TGR (the meta-model is Conv4 in
# both), then `dfmeta report` (Table 3 for the mixed zoo, Table 1 for the Conv4 one). Run from the repository root.
#
#   bash benchmarks/multi_arch.sh OUT
#   environment:
#     TEACHERS     teachers per zoo (default 100, the paper's)
#     ARCHS        architectures of the mixed zoo (default "conv4 resnet10 resnet18")
#     DATASET      dataset of zoos and runs (default cifar-fs)
#     SHOT         K of the presets multi-arch-Kshot / cifar-fs-Kshot (default 1)
#     SEEDS        meta-training seeds, each run on both zoos (default 0)
#     LANES        processes at once: zoo shards, then runs (default 1); on a CPU give each one thread
#     ZOO_EXTRA    flags for both `dfmeta zoo build`s (e.g. --epochs, --threads)
#     GROUP_EXTRA  flags for `dfmeta group` (recovery size must match EXTRA's: --steps/--nf/--per-class)
#     EXTRA        flags for every `dfmeta train`
# The CPU size of docs/results/cpu-2026-12-02-multi-arch.md (its steps took about 2 hours per seed on the 2-core
# box: mixed zoo 65 min on 2 lanes, Conv4 zoo 11 min, groupings 14 min, the two runs 37 min side by side):
# (that record's ResNet teachers trained with the authors' SGD, which is --optimizer auto since the default became
# the paper's Adam on 2026-12-07):
#   TEACHERS=14 LANES=2 ZOO_EXTRA="--epochs 8 --milestones 5 7 --optimizer auto --device cpu --threads 1" \
#     GROUP_EXTRA="--nf 16 --steps 30 --per-class 16 --device cpu --threads 1" \
#     EXTRA="--small-groups merge --rec-nf 16 --rec-steps 30 --rec-per-class 16 --epochs 8 --val-every 2 \
#       --val-episodes 300 --device cpu --threads 1" bash benchmarks/multi_arch.sh runs/multi-arch
# Zoo builds resume; a grouping with its groups.json and a run marked OUT/runs/NAME.done are skipped on a rerun.
set -uo pipefail
if [ $# -ne 1 ]; then sed -n '6,26p' "$0"; exit 2; fi
OUT=$1
export OUT TEACHERS=${TEACHERS:-100} ARCHS=${ARCHS:-conv4 resnet10 resnet18} DATASET=${DATASET:-cifar-fs} \
  SHOT=${SHOT:-1} EXTRA=${EXTRA:-} GROUP_EXTRA=${GROUP_EXTRA:-} ZOO_EXTRA=${ZOO_EXTRA:-}
LANES=${LANES:-1}
case "$SHOT" in 1|5) ;; *) echo "multi_arch: SHOT must be 1 or 5, got '$SHOT'" >&2; exit 2 ;; esac
for n in "$TEACHERS" "$LANES"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "multi_arch: TEACHERS and LANES must be positive integers, got '$n'" >&2; exit 2; }
done
dfmeta() { python -m dfmeta.cli "$@"; }
export -f dfmeta
mkdir -p "$OUT/groups" "$OUT/runs"

# Both zoos, each in LANES shards at once (the same seed: teacher i has the same classes in both).
build() {  # name, architectures...
  name=$1; shift
  echo "== zoo $name: $*"
  for ((s = 0; s < LANES; s++)); do
    # shellcheck disable=SC2086
    dfmeta zoo build --dataset "$DATASET" --teachers "$TEACHERS" --archs "$@" --zoo "$OUT/$name" --shard "$s/$LANES" \
      $ZOO_EXTRA > "$OUT/$name.$s.log" 2>&1 &
  done
  ok=0; for ((s = 0; s < LANES; s++)); do wait -n || ok=1; done
  [ $ok -eq 0 ] || { echo "!! zoo $name failed ($OUT/$name.*.log): $(tail -qn 1 "$OUT/$name".*.log | sort -u)"; exit 1; }
}
# shellcheck disable=SC2086
build zoo-mixed $ARCHS
build zoo-conv4 conv4

for name in zoo-mixed zoo-conv4; do
  dir="$OUT/groups/$name"
  [ -f "$dir/groups.json" ] && continue
  echo "== groups: $name"
  rm -rf "$dir" "$OUT/groups/tmp"
  # shellcheck disable=SC2086
  dfmeta group --zoo "$OUT/$name" --out-dir "$OUT/groups/tmp" $GROUP_EXTRA > "$OUT/groups/$name.log" 2>&1 \
    || { echo "!! grouping $name failed: $OUT/groups/$name.log"; exit 1; }
  mv "$OUT"/groups/tmp/* "$dir" && rmdir "$OUT/groups/tmp"
done

train_one() {  # zoo name, seed
  name=$1; seed=$2; run="$name-seed$seed"
  [ -f "$OUT/runs/$run.done" ] && { echo "== $run: done before, skipped"; return 0; }
  preset=multi-arch-${SHOT}shot; [ "$name" = zoo-conv4 ] && preset=cifar-fs-${SHOT}shot
  rm -rf "${OUT:?}/runs/$run"; mkdir -p "$OUT/runs/$run"
  echo "== $run: started $(date +%T)"
  # shellcheck disable=SC2086
  if dfmeta train --preset "$preset" --dataset "$DATASET" --zoo "$OUT/$name" --groups-from "$OUT/groups/$name" \
       --seed "$seed" --out-dir "$OUT/runs/$run" $EXTRA > "$OUT/runs/$run.log" 2>&1; then
    touch "$OUT/runs/$run.done"; echo "== $run: finished $(date +%T): $(grep -h '^meta-test' "$OUT/runs/$run.log" | tr '\n' ' ')"
  else
    echo "!! $run failed: $OUT/runs/$run.log"
  fi
}
export -f train_one
for seed in ${SEEDS:-0}; do printf '%s %s\n' zoo-mixed "$seed" zoo-conv4 "$seed"; done \
  | xargs -P "$LANES" -L 1 bash -c 'train_one "$0" "$1"'
dfmeta report "$OUT/runs" --out "$OUT/report.md" && echo "report: $OUT/report.md"
