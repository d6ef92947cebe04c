"""Find run directories (by their ``config.json``) and read them: meta-training, evaluation and analysis runs.

A *record* is a run kept as files with a common prefix in a folder (``docs/results/X/tgr_config.json``,
``tgr_results.json``, ``tgr_metrics.jsonl``, ...): the form the recorded results take. It is read as the run
directory it was copied from, under the path ``X/tgr``.

A meta-training run (``dfmeta train``, ``dfmeta baseline ...``) has ``results.json`` with ``"test"``; an evaluation
run (``dfmeta evaluate``) has ``results.json`` with ``"results"``; an analysis run (``dfmeta group``, ``dfmeta
analyse ...``) has ``analysis.json``. A run without them is unfinished: it is listed, never reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dfmeta.config import BEFORE_FIELD
from dfmeta.errors import DfmetaError
from dfmeta.runs import read_json, read_json_object

Kind = Literal["train", "evaluate", "analysis"]

# Defaults of the switches that change the method (dfmeta train and the baselines; the paper's setting). A run
# differing in one of them is an ablation (Tables 4-6, 8; Fig. 6) or, outside the paper (replay_mix, replay_cue,
# replay_cue_scope, replay_cue_kind, rec_augment), an "other run", never the main table's method.
ABLATION_DEFAULTS: dict[str, Any] = dict(grouping="dissimilarity", igr="first", kd=True, ce=True, replay=True,
                                         groups=5, zoo_size=0, replay_mix="across", replay_cue=0.0,
                                         replay_cue_scope="class", replay_cue_kind="colour",
                                         rec_augment=True)
# Switches that make a baseline its paper's method, by method; a run setting one otherwise is an ablation of the
# baseline (an "other run"), never its row in the main table. PURER's init defaults to random in the multi-arch
# scenario, as its preset (no parameter average of mixed architectures); DRO's beta may be any weight but 0 (no DRO).
METHOD_SWITCHES: dict[str, dict[str, Any]] = {
    "purer": dict(adv_schedule="switch", init="average", first_order=False),
    "bidf-mkd": dict(boundary=True, inner_loss="kd", kd_form="kl", first_order=False),
    "dro": dict(beta="> 0", flow="svgd", head="fused", meta_init="mean"),
}
# Config fields that do not change what a run measures (machine, paths, stopping and resuming).
IGNORED = {"seed", "device", "threads", "out_dir", "data_root", "zoo", "groups_from", "resume", "run_dir",
           "stop_after", "time_limit", "episode_batch", "shots"}
# Fast paths: the same computation as the reference path up to float rounding (each is tested against it), so they
# never split a table's rows; a cell's footnote still lists them where set away from the defaults.
SPEED = {"rec_amp", "rec_graph", "rec_channels_last", "rec_batching", "rec_compile", "rec_prefetch", "rec_overlap",
         "replay_graph"}
# A config value that had no effect on the run (``small_groups`` where no group was small): it neither splits rows
# nor shows as set away from the defaults.
NOT_APPLIED = "n/a"
# Fields that place a run in a table (its row or column).
COORDINATES = {"dataset", "train_shot", "method", "split", *ABLATION_DEFAULTS,
               *(k for switches in METHOD_SWITCHES.values() for k in switches)}


def read_metrics(path: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The lines of a JSON-lines file (``metrics.jsonl``, ``env.jsonl``; none if absent); a malformed line is an
    error naming file and line, except a malformed last line (a kill mid-write), which is skipped with a note in
    ``notes``."""
    if not path.is_file():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for i, line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == lines[-1][0]:
                (notes if notes is not None else []).append(
                    f"{path.name}: line {i}, the last, is cut short (a kill mid-write?) and was skipped")
                break
            raise DfmetaError(f"{path}:{i}: not valid JSON ({e})") from None
    return rows


@dataclass
class Run:
    """One run directory, parsed."""

    path: Path
    kind: Kind
    config: dict[str, Any]
    results: dict[str, Any] | None = None
    """``results.json`` (None: unfinished)."""
    analysis: dict[str, Any] | None = None
    """``analysis.json`` of an analysis run."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    envs: list[dict[str, Any]] = field(default_factory=list)
    """``env.jsonl``: the machine and software of each call (none for runs made before dfmeta recorded them)."""
    archs: tuple[str, ...] | None = None
    """Architectures of the zoo's teachers (None: no zoo, or its manifest was not found)."""
    zoo_note: str = ""
    """Why ``archs`` is unknown, if the run names a zoo."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """The default config of the run's method (meta-training runs)."""
    notes: list[str] = field(default_factory=list)
    """What reading the run skipped (a cut-short last line of metrics.jsonl)."""
    label: str = ""
    """The run's name in the report: its directory name, with as many parent folders as tell it apart from the other
    runs of the report (set by ``collect``)."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def shown(self) -> str:
        """The report's name for the run: ``label``, else the directory name."""
        return self.label or self.name

    @property
    def finished(self) -> bool:
        return self.analysis is not None if self.kind == "analysis" else self.results is not None

    @property
    def method(self) -> str:
        """tgr, purer, ..., finetune, ...: from results.json, else the config, else the directory name."""
        for src in (self.results or {}, self.config, self.analysis or {}):
            if isinstance(src.get("method"), str):
                return src["method"]
        if isinstance((self.analysis or {}).get("analysis"), str):
            return self.analysis["analysis"]  # type: ignore[index]
        parts = self.name.split("__")
        if len(parts) == 4:
            return parts[1]
        return (method_of_config(self.config) if self.kind == "train" else None) or "?"

    @property
    def dataset(self) -> str:
        return str(self.config.get("dataset") or (self.results or {}).get("dataset") or "?")

    @property
    def scenario(self) -> str:
        """single, multi-domain (several datasets joined by '+') or multi-arch (a zoo of several architectures)."""
        if "+" in self.dataset:
            return "multi-domain"
        if self.archs and len(set(self.archs)) > 1:
            return "multi-arch"
        return "single"

    @property
    def epochs(self) -> int | None:
        """Configured epochs T (meta-training runs)."""
        return self.config.get("epochs") if self.kind == "train" else None

    @property
    def epochs_run(self) -> int | None:
        """Epochs run: from results.json, else (unfinished) the last logged epoch."""
        if self.results is not None:
            return self.results.get("epochs_run")
        done = [m["epoch"] for m in self.metrics if isinstance(m.get("epoch"), int)]
        return max(done) if done else 0

    @property
    def selected_epoch(self) -> int | None:
        return (self.results or {}).get("selected_epoch")

    @property
    def ended_early(self) -> bool:
        """A meta-training run that stopped before its configured T (time limit)."""
        return self.kind == "train" and None not in (self.epochs, self.epochs_run) and self.epochs_run < self.epochs

    def switch_defaults(self) -> dict[str, Any]:
        """The defaults of the switches this run's method has: TGR's (:data:`ABLATION_DEFAULTS`; a baseline has
        only some, e.g. zoo_size) and the baseline's own (:data:`METHOD_SWITCHES`)."""
        own = dict(METHOD_SWITCHES.get(self.method, {}))
        if self.method == "purer" and self.scenario == "multi-arch":
            own["init"] = "random"
        return {k: v for k, v in {**ABLATION_DEFAULTS, **own}.items() if k in self.config}

    def ablation(self) -> dict[str, Any]:
        """The run's values of the switches its method has."""
        return {k: self.config[k] for k in self.switch_defaults()}

    def deviations(self) -> set[str]:
        """Switches set away from the paper's default (for DRO's beta, "> 0": any weight but 0)."""
        defaults = self.switch_defaults()
        return {k for k, v in self.ablation().items()
                if (not (isinstance(v, (int, float)) and v > 0) if defaults[k] == "> 0" else v != defaults[k])} | (
            {"meta_model"} if self.config.get("meta_model") else set())  # a trained meta-model scored again

    def changed_settings(self) -> dict[str, Any]:
        """Settings a meta-training run set away from its method's defaults (the paper's sizes: recovery, replay,
        validation, ...), other than table coordinates, machine and path fields and the epochs (reported apart)."""
        skip = IGNORED | COORDINATES | {"epochs"}
        return {k: v for k, v in self.config.items() if k in self.defaults and k not in skip and v != NOT_APPLIED
                and json.dumps(v, sort_keys=True) != json.dumps(self.defaults[k], sort_keys=True)}

    def small_groups_acted(self) -> bool:
        """Whether ``small_groups`` changed the run's groups: some group of its ``groups.json`` had fewer than m
        teachers (True where that file is absent). Where none did, merge and fewer ran as the default would."""
        path = run_file(self.path, "groups.json")
        if not path.is_file():
            return True
        sizes, m = read_json_object(path).get("sizes"), self.config.get("teachers_per_epoch")
        if not isinstance(sizes, list) or not isinstance(m, int):
            return True
        return any(isinstance(n, int) and 0 < n < m for n in sizes)

    def shots(self) -> list[int]:
        """The K values with a test result."""
        return sorted(int(k) for k in self._by_shot())

    def test(self, k: int) -> dict[str, Any] | None:
        """``{"acc", "ci95", "episodes", ["domains"]}`` at K shots, if tested."""
        return self._by_shot().get(str(k))

    def _by_shot(self) -> dict[str, Any]:
        if self.results is None:
            return {}
        return self.results.get("test" if self.kind == "train" else "results") or {}


@dataclass
class Collection:
    """Every run found, sorted into what the report can use."""

    runs: list[Run] = field(default_factory=list)
    """Finished meta-training and test-split evaluation runs."""
    analyses: list[Run] = field(default_factory=list)
    unfinished: list[Run] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """Directories left out, with the reason."""


RECORD_FILES = ("config.json", "analysis.json")
"""A record is found by either file (an analysis record may have been kept without its config)."""


def run_file(run: Path, name: str) -> Path:
    """The file ``name`` (``results.json``, ...) of a run directory, or of a record (``X/tgr`` -> ``X/tgr_name``)."""
    return run / name if run.is_dir() else run.with_name(f"{run.name}_{name}")


def find_run_dirs(paths: list[str] | tuple[str, ...]) -> list[Path]:
    """Run directories: each path that holds ``config.json`` or names a record (``X/tgr`` for
    ``X/tgr_config.json`` or ``X/tgr_analysis.json``), or every run directory and record below it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir() and any(run_file(p, f).is_file() for f in RECORD_FILES):
            found.append(p)
            continue
        if not p.exists():
            raise DfmetaError(f"{p}: no such run directory, record or folder")
        if (p / "config.json").is_file():
            found.append(p)
            continue
        below = sorted([c.parent for c in p.rglob("config.json")]
                       + [c.with_name(c.name[:-len(f) - 1]) for f in RECORD_FILES for c in p.rglob("*_" + f)])
        if not below:
            raise DfmetaError(f"{p}: no run directories below it (none holds a config.json or a record "
                              "NAME_config.json)")
        found.extend(below)
    unique = {d.resolve(): d for d in found}
    return sorted(unique.values(), key=lambda d: str(d))


def zoo_archs(config: dict[str, Any], results: dict[str, Any] | None = None
              ) -> tuple[tuple[str, ...] | None, str]:
    """The architectures of the teachers a run used: from its results (``zoo_archs``), else from
    ``<zoo>/manifest.json`` (runs written before results named them); or None and why."""
    from dfmeta.zoo.format import read_manifest
    if results is not None and isinstance(results.get("zoo_archs"), list):
        return tuple(str(a) for a in results["zoo_archs"]), ""
    zoo = config.get("zoo")
    if not zoo:
        return None, ""
    if not (Path(zoo) / "manifest.json").is_file():
        return None, f"zoo {zoo} not found here"
    try:
        models = read_manifest(zoo)["models"]
    except DfmetaError as e:  # the report does not depend on the zoo: say why and go on
        return None, str(e)
    return tuple(str(m.get("arch", "?")) for m in models), ""


def method_configs() -> dict[str, type]:
    """The config class of each meta-training method."""
    from dfmeta.meta.bidf_mkd import BiDfMKDConfig
    from dfmeta.meta.dro import DROConfig
    from dfmeta.meta.purer import PurerConfig
    from dfmeta.meta.real_maml import RealMAMLConfig
    from dfmeta.meta.trainer import TrainConfig
    return {"tgr": TrainConfig, "vanilla": TrainConfig, "purer": PurerConfig, "bidf-mkd": BiDfMKDConfig,
            "dro": DROConfig, "maml-real": RealMAMLConfig}


def method_of_config(config: dict[str, Any]) -> str | None:
    """The meta-training method whose config has all of ``config``'s fields and some no other method's has (None:
    none or several): names an unfinished run copied under another name. TGR without grouping and IGR is vanilla,
    as the run directory names it."""
    import dataclasses
    fields = {m: {f.name for f in dataclasses.fields(c)} for m, c in method_configs().items() if m != "vanilla"}
    fits = [m for m, own in fields.items()
            if set(config) <= own and set(config) - set().union(*(f for n, f in fields.items() if n != m))]
    if len(fits) != 1:
        return None
    if fits[0] == "tgr" and config.get("grouping") == "off" and config.get("igr") == "off":
        return "vanilla"
    return fits[0]


def config_defaults(method: str) -> dict[str, Any]:
    """The default config of a meta-training method (empty for an unknown one)."""
    import dataclasses
    cls = method_configs().get(method)
    if cls is None:
        return {}
    return json.loads(json.dumps({f.name: getattr(cls, f.name) for f in dataclasses.fields(cls)
                                  if f.default is not dataclasses.MISSING}, default=str))


def load_run(path: Path, config: dict[str, Any] | None = None) -> Run:
    """Parse one run directory or record (config.json unless given, results.json or analysis.json,
    metrics.jsonl, env.jsonl)."""
    config = read_json_object(run_file(path, "config.json")) if config is None else config
    results = read_json_object(run_file(path, "results.json")) if run_file(path, "results.json").is_file() else None
    analysis = read_json_object(run_file(path, "analysis.json")) if run_file(path, "analysis.json").is_file() else None
    if analysis is not None:
        kind: Kind = "analysis"
    elif results is not None:
        if isinstance(results.get("test"), dict):
            kind = "train"
        elif isinstance(results.get("results"), dict):
            kind = "evaluate"
        else:
            raise DfmetaError(f"{run_file(path, 'results.json')}: expected a field 'test' (meta-training run) or "
                              "'results' (evaluation run)")
    else:
        kind = "train" if "val_every" in config else "evaluate" if "split" in config else "analysis"
    notes: list[str] = []
    run = Run(path, kind, config, results, analysis, read_metrics(run_file(path, "metrics.jsonl"), notes),
              read_metrics(run_file(path, "env.jsonl"), notes), notes=notes)
    if kind == "train":  # a run older than a config field had that field's default (or what it ran before it)
        run.defaults = config_defaults(run.method)
        run.config = {**run.defaults, **{k: v for k, v in BEFORE_FIELD.items() if k in run.defaults}, **config}
        if "small_groups" in run.defaults and not run.small_groups_acted():
            run.config["small_groups"] = NOT_APPLIED  # no group was small: any value would have run the same
        if run.config.get("grouping") == "off" and "fisher_cosine" in run.defaults:
            run.config["fisher_cosine"] = NOT_APPLIED  # nothing was grouped: no form of Eq. 6 was used
    run.archs, run.zoo_note = zoo_archs(config, results)
    if run.kind != "analysis":
        for k, res in run._by_shot().items():
            if not (k.isdigit() and isinstance(res, dict) and isinstance(res.get("acc"), (int, float))
                    and isinstance(res.get("ci95"), (int, float))):
                raise DfmetaError(f"{run_file(path, 'results.json')}: the result at K={k!r} needs numbers 'acc' and "
                                  "'ci95'")
    return run


def describe(run: Run) -> str:
    """What a run is, for a message: "a tgr training run", "a finetune evaluation run", ..."""
    what = {"train": "training", "evaluate": "evaluation", "analysis": "analysis"}[run.kind]
    return f"{'an' if run.method[:1] in 'aeiou' else 'a'} {run.method} {what} run"


def collect(paths: list[str] | tuple[str, ...]) -> Collection:
    """Find, parse and sort every run below ``paths``."""
    out = Collection()
    for d in find_run_dirs(paths):
        try:
            if run_file(d, "config.json").is_file():
                config = read_json(run_file(d, "config.json"))
                if not isinstance(config, dict) or "seed" not in config:
                    out.skipped.append((d, "config.json is not a dfmeta run's (no 'seed' field)"))
                    continue
            else:  # an analysis record kept without its config: the analysis is all the report needs
                config = {}
            run = load_run(d, config)
        except DfmetaError as e:  # one broken run (a file cut short by a kill) does not stop the report
            out.skipped.append((d, str(e)))
            continue
        if not run.finished:
            out.unfinished.append(run)
        elif run.kind == "analysis":
            out.analyses.append(run)
        elif run.kind == "evaluate" and (run.results or {}).get("split", run.config.get("split")) != "test":
            out.skipped.append((d, f"evaluation on split {run.results.get('split')!r} (only 'test' is reported)"))
        else:
            out.runs.append(run)
    label_runs([*out.runs, *out.analyses, *out.unfinished])
    return out


def label_runs(runs: list[Run]) -> None:
    """Give every run the shortest trailing part of its path that no other run shares (``groups-3/cifar-fs__tgr__0__t``
    where ``cifar-fs__tgr__0__t`` stands under two folders): two runs of a report are never shown under one name."""
    depth = {id(r): 1 for r in runs}

    def tail(r: Run) -> str:
        return "/".join(r.path.parts[-depth[id(r)]:])

    while True:
        seen: dict[str, list[Run]] = {}
        for r in runs:
            seen.setdefault(tail(r), []).append(r)
        clash = [r for group in seen.values() if len(group) > 1 for r in group if depth[id(r)] < len(r.path.parts)]
        if not clash:
            break
        for r in clash:
            depth[id(r)] += 1
    for r in runs:
        r.label = tail(r)
