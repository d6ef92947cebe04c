#!/usr/bin/env bash
# TGR's ablations (the paper's Tables 4, 5, 6 and 8, and Fig. 6) in one command: every variant meta-trained on one zoo with the
# same seed, settings and epochs, selected on meta-val and meta-tested once; then `dfmeta report` renders the tables.
# The task groups are computed once per (mode, c) by `dfmeta group` (the Fisher matrix W once, reused for every c)
# and shared by the runs through --groups-from. Run from the repository root.
#
#   bash benchmarks/ablation_grid.sh ZOO OUT [VARIANT ...]
#     VARIANT: tgr vanilla grouping-only igr-only kd-only ce-only similarity groups-C (C = 1..9)
#              teachers-N (Fig. 6: TGR on a seeded subset of N teachers, grouped from the zoo's W into the most
#              groups, at most c, that each hold m teachers: --small-groups fewer)
#     default: tgr vanilla grouping-only igr-only kd-only ce-only similarity groups-3
#   environment:
#     SETTING      the paper setting (preset), default cifar-fs-1shot
#     LANES        runs at once (default 1); on a CPU give each run one thread through EXTRA="--threads 1 ..."
#     EXTRA        flags for every `dfmeta train`, e.g. the CPU size below
#     GROUP_EXTRA  flags for `dfmeta group`: its recovery must match EXTRA's (--steps/--nf/--per-class there are
#                  --rec-steps/--rec-nf/--rec-per-class here)
# The CPU size of docs/results/cpu-2026-12-01-ablations.md (on the 2-core box: grouping 13 minutes, then about 32
# minutes per run with 2 lanes, so about 2 h 20 min for the default eight variants):
#   LANES=2 EXTRA="--rec-nf 16 --rec-steps 30 --rec-per-class 16 --epochs 8 --val-every 2 --val-episodes 300 \
#     --threads 1 --device cpu" GROUP_EXTRA="--nf 16 --steps 30 --per-class 16 --device cpu --threads 2" \
#     bash benchmarks/ablation_grid.sh .carry/zoo runs/ablations
# A variant whose run finished (OUT/runs/VARIANT.done) is skipped on a rerun; an interrupted one starts again.
set -uo pipefail
if [ $# -lt 2 ]; then sed -n '7,22p' "$0"; exit 2; fi
ZOO=$1; OUT=$2; shift 2
VARIANTS=${*:-tgr vanilla grouping-only igr-only kd-only ce-only similarity groups-3}
export ZOO OUT SETTING=${SETTING:-cifar-fs-1shot} EXTRA=${EXTRA:-} GROUP_EXTRA=${GROUP_EXTRA:-}
[ -d "$ZOO" ] || { echo "ablation_grid: zoo $ZOO not found (a dfmeta zoo directory expected)" >&2; exit 2; }
for v in $VARIANTS; do
  case "$v" in tgr|vanilla|grouping-only|igr-only|kd-only|ce-only|similarity|groups-[1-9]) ;;
    teachers-*) [[ ${v#teachers-} =~ ^[1-9][0-9]*$ ]] || { echo "ablation_grid: '$v': teachers-N needs a number" \
                  "N >= 1" >&2; exit 2; } ;;
    *) echo "ablation_grid: unknown variant '$v' (expected tgr, vanilla, grouping-only, igr-only, kd-only, ce-only," \
            "similarity, groups-1..9 or teachers-N)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT/groups" "$OUT/runs"

# The groups each variant needs: mode and c (none for the variants without grouping).
groups_of() {
  case "$1" in vanilla|igr-only) echo "" ;; similarity) echo "similarity 5" ;; groups-*) echo "dissimilarity ${1#groups-}" ;;
    *) echo "dissimilarity 5" ;; esac
}

# Group once: the first `dfmeta group` computes W; every other (mode, c) reuses a copy of its run directory (also
# one left in OUT/groups by an earlier call with other variants).
base=""
for d in "$OUT"/groups/*/; do [ -f "$d/groups.json" ] && [ -f "$d/fisher.npz" ] && { base=${d%/}; break; }; done
for v in $VARIANTS; do
  read -r mode c <<< "$(groups_of "$v")"
  [ -n "$mode" ] || continue
  dir="$OUT/groups/$mode-$c"
  [ -f "$dir/groups.json" ] && { base=${base:-$dir}; continue; }
  if [ -n "$base" ]; then rm -rf "$dir"; cp -r "$base" "$dir"; run_dir=(--run-dir "$dir"); else
    run_dir=(--out-dir "$OUT/groups/tmp"); fi
  echo "== groups: $mode, c = $c"
  # shellcheck disable=SC2086
  python -m dfmeta.cli group --zoo "$ZOO" --mode "$mode" --groups "$c" "${run_dir[@]}" $GROUP_EXTRA \
    > "$OUT/groups/$mode-$c.log" 2>&1 || { echo "!! grouping $mode $c failed: $OUT/groups/$mode-$c.log"; exit 1; }
  if [ -z "$base" ]; then mv "$OUT"/groups/tmp/* "$dir" && rmdir "$OUT/groups/tmp"; fi
  base=${base:-$dir}
done

train_variant() {
  v=$1
  [ -f "$OUT/runs/$v.done" ] && { echo "== $v: done before, skipped"; return 0; }
  read -r mode c <<< "$(groups_of "$v")"
  preset=$v; size=(); [ "$v" = tgr ] && preset=""
  case "$v" in teachers-*) preset=""; size=(--zoo-size "${v#teachers-}" --small-groups fewer) ;; esac
  from=(); [ -n "$mode" ] && from=(--groups-from "$OUT/groups/$mode-$c")
  rm -rf "${OUT:?}/runs/$v"; mkdir -p "$OUT/runs/$v"
  echo "== $v: started $(date +%T)"
  # shellcheck disable=SC2086
  if python -m dfmeta.cli train --preset "$SETTING" $preset --zoo "$ZOO" --out-dir "$OUT/runs/$v" "${from[@]}" \
       $EXTRA "${size[@]}" > "$OUT/runs/$v.log" 2>&1; then
    touch "$OUT/runs/$v.done"; echo "== $v: finished $(date +%T): $(grep -h '^meta-test' "$OUT/runs/$v.log" | tr '\n' ' ')"
  else
    echo "!! $v failed: $OUT/runs/$v.log"
  fi
}
export -f train_variant groups_of
printf '%s\n' $VARIANTS | xargs -P "${LANES:-1}" -I{} bash -c 'train_variant {}'
python -m dfmeta.cli report "$OUT/runs" --out "$OUT/report.md" && echo "report: $OUT/report.md"
