"""Training diagnostics: what each meta-training run logged per epoch, averaged over the same epochs for every run
(the first ones, and the last ones all runs reached), so runs of different lengths read side by side: the training
loss (TGR: the fresh tasks' Eq. 8 loss), how well replay tasks are solved, replay meta-batches and seconds per epoch."""

from __future__ import annotations

import math

from dfmeta.report.cells import md_table
from dfmeta.report.collect import Run
from dfmeta.report.curves import by_episode_set, method_label

WINDOW = 10
"""Epochs averaged per window."""
FIELDS = (("loss", "training loss", "{:.2f}"), ("replay_acc", "replay accuracy", "{:.2f}"))
"""Per-epoch fields shown for both windows: (metrics key, column, format)."""


def epoch_rows(run: Run) -> dict[int, dict]:
    """The run's ``metrics.jsonl`` rows of finished epochs, by epoch."""
    return {m["epoch"]: m for m in run.metrics if isinstance(m.get("epoch"), int)}


def window_mean(rows: dict[int, dict], key: str, first: int, last: int) -> float | None:
    """Mean of ``key`` over epochs ``first..last`` where logged as a finite number (None: never)."""
    values = [float(v) for e in range(first, last + 1) if isinstance(v := rows.get(e, {}).get(key), (int, float))
              and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def _cell(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def foreground_seconds(row: dict) -> float:
    """An epoch's logged stage times (``t_*``: recovery wait, IGR, replay, ...), without validation (``t_val``)."""
    return sum(float(v) for k, v in row.items() if k.startswith("t_") and k != "t_val" and isinstance(v, (int, float)))


def diagnostics_section(runs: list[Run]) -> list[str]:
    """``## Training diagnostics`` for the meta-training runs (finished or not) whose epochs log a training loss;
    runs that met the same meta-val episodes (comparable runs) are averaged over the same epochs."""
    logged = [(r, rows) for r in sorted(runs, key=lambda r: (r.name, r.shown))
              if r.kind == "train" and (rows := epoch_rows(r)) and any("loss" in m for m in rows.values())]
    if not logged:
        return []
    body = []
    for members in by_episode_set(logged, lambda item: item[0]):
        end = min(max(rows) for _, rows in members)  # the last epoch every run of the set reached
        windows = [(1, min(WINDOW, end))] + ([(end - WINDOW + 1, end)] if end >= 2 * WINDOW else [])
        for r, rows in members:
            cells = [" / ".join(_cell(window_mean(rows, key, a, b), fmt) for a, b in windows) for key, _, fmt in FIELDS]
            seconds = [foreground_seconds(m) for m in rows.values()]
            body.append([f"`{r.shown}`", method_label(r), str(len(rows)), " / ".join(f"{a}-{b}" for a, b in windows),
                         *cells, _cell(window_mean(rows, "replay_batches", 1, max(rows)), "{:.1f}"),
                         _cell(sum(seconds) / len(seconds) if any(seconds) else None, "{:.1f}")])
    header = ["run", "method", "epochs logged", "epochs averaged", *(title for _, title, _ in FIELDS),
              "replay meta-batches per epoch", "seconds per epoch (no validation)"]
    return ["## Training diagnostics", "", f"Means of what each run logged per epoch over the first {WINDOW} epochs "
            f"and the last {WINDOW} that every run on the same meta-val episodes reached (report fewer runs together "
            "for a later window). Training loss: TGR's is the fresh tasks' Eq. 8 loss; replay accuracy: replay tasks "
            "solved in training; seconds: the logged stages of an epoch, over all its epochs.", "",
            *md_table(header, body), ""]
