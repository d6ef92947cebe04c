"""Where the runs ran: each distinct machine and software of the runs' calls (their ``env.jsonl``), so a reader
knows which numbers came from the same box and build before comparing them to the last digit."""

from __future__ import annotations

from dfmeta.environment import describe
from dfmeta.report.cells import md_table
from dfmeta.report.collect import Run


def same_machine(a: Run, b: Run) -> str:
    """yes: every call of both runs on one machine and software; no: they differ; —: a run recorded none."""
    if not a.envs or not b.envs:
        return "—"
    sets = [{describe(e)[:2] for e in r.envs} for r in (a, b)]
    return "yes" if len(sets[0]) == 1 and sets[0] == sets[1] else "no"


def machines_section(runs: list[Run]) -> list[str]:
    """``## Machines``: one row per (machine, software, source) with the runs and calls that used it."""
    seen: dict[tuple[str, str, str], dict[str, int]] = {}
    unrecorded = []
    for r in sorted(runs, key=lambda r: r.shown):
        if not r.envs:
            unrecorded.append(r.shown)
        for env in r.envs:
            calls = seen.setdefault(describe(env), {})
            calls[r.shown] = calls.get(r.shown, 0) + 1
    if not seen:
        return []
    rows = [[machine, software, source, ", ".join(f"`{name}`" + (f" ({n} calls)" if n > 1 else "")
                                                  for name, n in calls.items())]
            for (machine, software, source), calls in seen.items()]
    lines = ["## Machines", "", "The machine and software of each call of the runs (`env.jsonl`). The same seed "
             "gives the same numbers on one machine and build; across machines the last bits of floating-point "
             "kernels may differ and long optimisations can carry that into visibly different results.", "",
             *md_table(["machine", "software", "source", "runs"], rows), ""]
    if unrecorded:
        names = ", ".join(f"`{n}`" for n in unrecorded)
        lines += [f"Not recorded (runs made before dfmeta kept `env.jsonl`): {names}.", ""]
    return lines


__all__ = ["machines_section", "same_machine"]
