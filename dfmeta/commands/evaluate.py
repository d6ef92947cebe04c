"""``dfmeta evaluate``: score a baseline, or the selected meta-model of a meta-training run (``--meta-model``), on
seeded few-shot episodes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from dfmeta.baselines import BASELINES, NEEDS_ZOO, BaselineInput, Initialisation
from dfmeta.cli import Command
from dfmeta.commands.common import DataConfig, EvalFields
from dfmeta.config import given, make, to_dict
from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.domains import dataset_names, load_domains
from dfmeta.errors import DfmetaError
from dfmeta.meta.selected import SelectedModel, check_source, load_selected, record_source
from dfmeta.runs import RunDir, read_json_object, resolve_device, seed_everything, set_threads
from dfmeta.zoo.format import check_zoo_of_resume, record_zoo

CALL_FIELDS = ("device", "threads", "data_root", "zoo", "resume", "meta_model")
"""What a ``--resume`` call of an evaluation may give anew (where and how it runs, where its zoo or meta-model run
lies now: checked by checksums); the rest is the run's."""


@dataclass(frozen=True)
class EvaluateConfig(DataConfig, EvalFields):
    """Evaluate a meta-initialisation."""

    method: str = "finetune"
    """Baseline to evaluate: finetune, best-model, average, ota (zoo baselines need --zoo)."""
    arch: str = "conv4"
    """Meta-model architecture."""
    zoo: str = ""
    """Zoo directory (for zoo baselines)."""
    image_size: int = 0
    """Image size (0: the dataset's own)."""
    split: Literal["val", "test"] = "test"
    """Split to evaluate: val (model selection) or test (the final number, once)."""
    resume: str = ""
    """Continue this evaluation run directory (a killed call): its config is used, the K values it scored are kept."""
    meta_model: str = ""
    """A meta-training run directory: evaluate its selected meta-model (best.pt, chosen on meta-val) instead of a
    baseline, e.g. at another K or on another dataset. Method, arch, ways and image size are the run's; dataset,
    episodes, queries, eval steps and rate and episode seed default to the run's."""

    def validate(self) -> None:
        DataConfig.validate(self)
        EvalFields.validate(self)
        if self.meta_model:
            if self.zoo:
                raise DfmetaError("--zoo with --meta-model: the meta-model needs no zoo")
            return
        if self.method not in BASELINES:
            raise DfmetaError(f"field 'method': unknown method {self.method!r}; expected one of: "
                              f"{', '.join(sorted(BASELINES))}")
        if self.method in NEEDS_ZOO and not self.zoo and not self.resume:
            raise DfmetaError(f"method {self.method!r} needs a zoo: pass --zoo DIR")


def evaluate_init(init: Initialisation, cfg: EvalFields, splits: list[FewShotSplit], device: torch.device,
                  run: RunDir | None, label: str, done: dict[int, dict] | None = None) -> dict[int, dict]:
    """Evaluate one initialisation at every K of ``cfg.shots`` (``cfg.episodes`` on each of ``splits``) but those in
    ``done`` (scored by an earlier call); log each and return ``{K: result dict}``."""
    out = {}
    where = "+".join(s.name for s in splits)
    for k in cfg.shots:
        if done and k in done:
            out[k] = done[k]
            print(f"{label:>12s}  {where}  {cfg.ways}-way {k}-shot: {done[k]['acc']:.2f} ± {done[k]['ci95']:.2f}  "
                  f"({done[k]['episodes']} episodes; scored by an earlier call)")
            continue
        res = cfg.evaluator(splits, k, device)(init.model, init.params, init.head, progress=f"{label} {k}-shot")
        out[k] = res.as_dict()
        per = "".join(f"; {n} {r}" for n, r in res.parts.items())
        print(f"{label:>12s}  {where}  {cfg.ways}-way {k}-shot: {res}{per}  ({len(res.accs)} episodes)")
        if run is not None:
            run.log(method=label, split=where, ways=cfg.ways, shots=k, **res.as_dict())
    return out


def set_fields(cfg: EvaluateConfig) -> set[str]:
    """The fields the call set: its command line's, else (a config built in code) those away from the defaults."""
    from_call = given(cfg)
    if from_call is not None:
        return set(from_call)
    default = to_dict(EvaluateConfig())
    return {k for k, v in to_dict(cfg).items() if v != default[k]}


def for_meta_model(cfg: EvaluateConfig, sel: SelectedModel) -> EvaluateConfig:
    """The config evaluating ``sel``: the run's method, arch, ways and image size (a flag saying otherwise is
    refused), and its dataset and meta-test protocol (episodes, queries, fine-tuning steps and rate, episode seed)
    unless a flag names another."""
    from_call = set_fields(cfg)
    theirs = {"method": sel.method, "arch": sel.arch, "ways": sel.n_way, "image_size": sel.image_size}
    for k, v in theirs.items():
        mine = getattr(cfg, k)
        if k in from_call and mine != v and not (k == "image_size" and mine == 0):
            raise DfmetaError(f"--{k.replace('_', '-')} {mine} with --meta-model: the meta-model of {sel.run} is "
                              f"{k.replace('_', ' ')} {v}; leave the flag out")
    kept = {k: v for k, v in {"dataset": sel.dataset, **sel.protocol}.items() if k not in from_call}
    return replace(cfg, **theirs, **kept)


def resumed_evaluation(cfg: EvaluateConfig) -> EvaluateConfig:
    """The config a ``--resume`` call continues with: the run's, with the call's :data:`CALL_FIELDS`; refuses a run
    that is no evaluation and a setting the run fixes."""
    path = Path(cfg.resume)
    if not (path / "config.json").is_file():
        raise DfmetaError(f"{path}: not a run directory (no config.json)")
    stored = read_json_object(path / "config.json")
    if "split" not in stored or "val_every" in stored:
        raise DfmetaError(f"{path}: not a `dfmeta evaluate` run (resume a meta-training run with its own command)")
    from_call = set_fields(cfg)
    fixed = [k for k in from_call if k not in CALL_FIELDS and to_dict(cfg)[k] != stored.get(k)]
    if fixed:
        raise DfmetaError(f"{path}: {', '.join('--' + k.replace('_', '-') for k in fixed)} given with --resume, but "
                          f"the run's config.json fixes it; a resume call takes only --device, --threads, --data-root, "
                          f"--zoo, --meta-model")
    check_zoo_of_resume(path, stored.get("zoo", ""), cfg.zoo if "zoo" in from_call else "")
    return make(EvaluateConfig, {**stored, **{k: getattr(cfg, k) for k in CALL_FIELDS if k in from_call},
                                 "resume": ""})


def scored(run: RunDir, method: str) -> dict[int, dict[str, Any]]:
    """The results a killed call of this evaluation logged, by K (a line cut short by the kill is left out)."""
    from dfmeta.report.collect import read_metrics
    keys = ("method", "split", "ways", "shots")
    return {int(r["shots"]): {k: v for k, v in r.items() if k not in keys}
            for r in read_metrics(run.path / "metrics.jsonl") if r.get("method") == method and "shots" in r}


def run_evaluate(cfg: EvaluateConfig) -> None:
    resume = cfg.resume
    if resume:
        cfg = resumed_evaluation(cfg)
        if (Path(resume) / "results.json").is_file():
            raise DfmetaError(f"{resume}: finished already (its results.json holds every K)")
    sel = load_selected(cfg.meta_model) if cfg.meta_model else None
    if sel is not None:
        cfg = for_meta_model(cfg, sel)
        if resume:
            check_source(Path(resume), sel)
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    zoo = None
    if cfg.zoo:
        from dfmeta.zoo import load_zoo
        zoo = load_zoo(cfg.zoo)
        zoo.check_defaulted_dataset(cfg)
        if warning := zoo.dataset_warning(dataset_names(cfg.dataset)):
            print(warning, flush=True)
    channels = sel.channels if sel else zoo[0].in_channels if zoo is not None and len(zoo) else None
    splits = load_domains(cfg.dataset, cfg.split, cfg.data_root, cfg.image_size or None, channels)
    cfg.check_episodes(splits)
    if sel is not None:
        init = sel.initialisation(device)
        print(f"{sel.method}: the meta-model of {sel.run} selected on meta-val", flush=True)
    else:
        inp = BaselineInput(cfg.arch, cfg.ways, splits[0].image_size, splits[0].channels, cfg.seed, zoo, device)
        if zoo is not None:
            print(f"{cfg.method}: building the initialisation from the zoo's {len(zoo)} teachers", flush=True)
        init = BASELINES[cfg.method](inp)
    run = RunDir(resume) if resume else RunDir.new(cfg.out_dir, cfg.dataset, cfg.method, cfg.seed, cfg)
    try:
        with run.locked():
            run.record_environment(device)
            if cfg.zoo:
                record_zoo(run.path, cfg.zoo)
            if sel is not None and not resume:
                record_source(run.path, sel)
            results = evaluate_init(init, cfg, splits, device, run, cfg.method, scored(run, cfg.method))
            run.write_json("results.json", {"method": cfg.method, "split": cfg.split, "results": results,
                                            **({"meta_model": str(sel.run)} if sel else {})})
    except KeyboardInterrupt:
        print(f"continue with: dfmeta evaluate --resume {run.path}", flush=True)
        raise
    except Exception:  # bad input, memory, ...: a run that failed before its first result leaves nothing behind
        if not resume:
            run.discard_if_unused()
        raise
    print(f"run directory: {run.path}")


COMMANDS = [Command("evaluate", "Fine-tune a meta-initialisation on seeded episodes; mean accuracy and 95% CI.",
                    EvaluateConfig, run_evaluate)]
