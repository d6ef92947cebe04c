"""Model selection at a glance: each meta-training run's meta-val accuracy against epoch (a table and one PNG), so
a reader sees where the selected epoch sits on the curve and whether a run was still improving when it stopped."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Callable, TypeVar

from dfmeta.report.cells import md_table, short
from dfmeta.report.collect import Run
from dfmeta.report.machines import same_machine
from dfmeta.report.plots import PlotSink, val_curves_png
from dfmeta.report.tables import method_name

T = TypeVar("T")


def val_curve(run: Run) -> list[tuple[int, float]]:
    """(epoch, meta-val accuracy) of every validation logged in the run's ``metrics.jsonl``, in epoch order: those of
    epoch rows and the one a time limit adds after the last epoch (``validated_epoch``)."""
    points = {}
    for m in run.metrics:
        epoch = m.get("epoch", m.get("validated_epoch"))
        if isinstance(epoch, int) and isinstance(m.get("val_acc"), (int, float)) and m["val_acc"] >= 0:
            points[epoch] = float(m["val_acc"])
    return sorted(points.items())


def _at(curve: list[tuple[int, float]], epoch: int | None) -> str:
    """``epoch (accuracy)``; the epoch alone where no validation was logged at it."""
    if epoch is None:
        return "—"
    acc = dict(curve).get(epoch)
    return str(epoch) if acc is None else f"{epoch} ({acc:.2f})"


def _switches(run: Run) -> str:
    """`` [k=v, ...]``: the ablation switches the run set away from the paper's defaults ('' if none)."""
    switched = {k: v for k, v in run.ablation().items() if k in run.deviations()}
    return f" [{', '.join(f'{k}={short(v)}' for k, v in sorted(switched.items()))}]" if switched else ""


def method_label(run: Run) -> str:
    """The method's name and the ablation switches the run set away from the paper's defaults."""
    return method_name(run.method) + _switches(run)


def _zoo(run: Run) -> str:
    """The zoo a run learned from, by its folder's name (a ``zoo_size`` subset shows in the method column)."""
    zoo = run.config.get("zoo")
    return f"`{Path(str(zoo)).name}`" if zoo else "—"


def curves_section(runs: list[Run], sink: PlotSink) -> list[str]:
    """``## Meta-validation`` for the meta-training runs that logged a validation, finished or not (an unfinished
    run, e.g. one still training or stopped with ``defer_test``, shows its curve so far and no selection)."""
    curves = {r.shown: (r, c) for r in sorted(runs, key=lambda r: (r.name, r.shown))
              if r.kind == "train" and (c := val_curve(r))}
    if not curves:
        return []
    rows = []
    for name, (r, c) in curves.items():
        best = max(c, key=lambda p: (p[1], -p[0]))  # the earliest of equal bests, as the training loop selects
        ran = f"{r.epochs_run}/{r.epochs}" + ("" if r.finished else ", unfinished")
        rows.append([f"`{name}`", method_label(r), _zoo(r), ran, str(len(c)), _at(c, best[0]),
                     _at(c, r.selected_epoch), _at(c, c[-1][0])])
    header = ["run", "method", "zoo", "epochs run", "validations", "best meta-val: epoch (acc)", "selected: epoch (acc)",
              "last: epoch (acc)"]
    lines = ["## Meta-validation", "", "Meta-val accuracy (%) over training: the model is selected on it, meta-test is "
             "touched once for the selected model (an unfinished run has selected none yet).", "",
             *md_table(header, rows), ""]
    series = {name + _switches(r) + ("" if r.finished else " (unfinished)"): c  # the legend names run and switches
              for name, (r, c) in curves.items()}
    selected = {name + _switches(r): r.selected_epoch for name, (r, _) in curves.items() if r.selected_epoch}
    return (lines + head_to_head(curves) + common_window(curves)
            + sink.add("meta_val_curves.png", "Meta-val accuracy against epoch",
                       lambda p: val_curves_png(series, selected, p)))


SAME_EPISODES = ("dataset", "image_size", "ways", "queries", "train_shot", "val_episodes", "episode_seed", "eval_steps",
                 "eval_lr")
"""Config fields that fix a run's meta-val episodes and how they are scored: runs equal in all of them met the same
episodes, whatever their seed, so their meta-val numbers pair up epoch by epoch."""
MAX_PAIRED = 8
"""Runs of one episode set beyond which the pairs are not listed (28 pairs at 8)."""


def episode_set(run: Run) -> tuple[str, ...]:
    """The run's values of :data:`SAME_EPISODES`: runs equal in it are comparable epoch by epoch."""
    return tuple(str(run.config.get(f)) for f in SAME_EPISODES)


def by_episode_set(items: list[T], run_of: Callable[[T], Run]) -> list[list[T]]:
    """``items`` grouped by the :func:`episode_set` of their run, in order of first appearance."""
    sets: dict[tuple, list[T]] = {}
    for item in items:
        sets.setdefault(episode_set(run_of(item)), []).append(item)
    return list(sets.values())


def head_to_head(curves: dict[str, tuple[Run, list[tuple[int, float]]]]) -> list[str]:
    """Pairs of runs that validated on the same episodes, compared at the epochs both validated: how often each was
    ahead and the mean difference (a paired reading of two curves, less noisy than two single best numbers)."""
    rows, crowded = [], []
    for names in by_episode_set(list(curves), lambda n: curves[n][0]):
        if len(names) > MAX_PAIRED:
            crowded.append(len(names))
            continue
        for a, b in combinations(names, 2):
            va, vb = dict(curves[a][1]), dict(curves[b][1])
            diffs = [va[e] - vb[e] for e in sorted(set(va) & set(vb))]
            if diffs:
                rows.append([f"`{a}`", f"`{b}`", str(len(diffs)), str(sum(d > 0 for d in diffs)),
                             str(sum(d < 0 for d in diffs)), f"{sum(diffs) / len(diffs):+.2f}",
                             same_machine(curves[a][0], curves[b][0])])
    if not rows and not crowded:
        return []
    lines = ["### Head to head", "", "Runs that met the same meta-val episodes (same dataset, protocol and episode "
             "seed), paired at the epochs both validated; same machine: every call of both on one machine and build "
             "(see Machines; — where a run recorded none).", ""]
    if rows:
        lines += md_table(["run A", "run B", "common validations", "A ahead", "B ahead", "mean A − B",
                           "same machine"], rows) + [""]
    lines += [f"- {n} runs met one set of episodes: too many to pair (at most {MAX_PAIRED}); report fewer together."
              for n in crowded]
    return lines + ([""] if crowded else [])


def common_window(curves: dict[str, tuple[Run, list[tuple[int, float]]]]) -> list[str]:
    """Per set of runs that met the same meta-val episodes: each run's mean meta-val over the epochs up to the last
    one every run of the set validated (E), and over its later half (E/2 < epoch <= E), so runs of different lengths
    read as levels over one window rather than as single best numbers."""
    rows = []
    for names in (n for n in by_episode_set(list(curves), lambda n: curves[n][0]) if len(n) > 1):
        end = min(curves[n][1][-1][0] for n in names)
        for n in names:
            window = [(e, a) for e, a in curves[n][1] if e <= end]
            accs, late = [a for _, a in window], [a for e, a in window if e > end / 2]
            rows.append([f"`{n}`", method_label(curves[n][0]), f"1-{end}", str(len(window)),
                         *(f"{sum(x) / len(x):.2f}" if x else "—" for x in (accs, late)),
                         f"{max(accs):.2f}" if accs else "—"])
    if not rows:
        return []
    return ["### Over the common epochs", "", "Runs that met the same meta-val episodes, each averaged over the epochs "
            "every one of them validated (1-E) and over the later half of those (E/2 < epoch <= E).", "",
            *md_table(["run", "method", "epochs", "validations", "mean meta-val", "mean, later half", "best"], rows),
            ""]
