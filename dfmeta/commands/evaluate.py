"""``dfmeta evaluate``: score a baseline or a trained meta-model on seeded few-shot episodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dfmeta.baselines import BASELINES, NEEDS_ZOO, BaselineInput, Initialisation
from dfmeta.cli import Command
from dfmeta.commands.common import DataConfig, EvalFields
from dfmeta.data.dataset import FewShotSplit
from dfmeta.data.domains import dataset_names, load_domains
from dfmeta.errors import DfmetaError
from dfmeta.runs import RunDir, resolve_device, seed_everything, set_threads


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

    def validate(self) -> None:
        DataConfig.validate(self)
        EvalFields.validate(self)
        if self.method not in BASELINES:
            raise DfmetaError(f"field 'method': unknown method {self.method!r}; expected one of: "
                              f"{', '.join(sorted(BASELINES))}")
        if self.method in NEEDS_ZOO and not self.zoo:
            raise DfmetaError(f"method {self.method!r} needs a zoo: pass --zoo DIR")


def evaluate_init(init: Initialisation, cfg: EvalFields, splits: list[FewShotSplit], device: torch.device,
                  run: RunDir | None, label: str) -> dict[int, dict]:
    """Evaluate one initialisation at every K of ``cfg.shots`` (episodes spread over ``splits``); log and return
    ``{K: result dict}``."""
    out = {}
    where = "+".join(s.name for s in splits)
    for k in cfg.shots:
        res = cfg.evaluator(splits, k, device)(init.model, init.params, init.head, progress=f"{label} {k}-shot")
        out[k] = res.as_dict()
        per = "".join(f"; {n} {r}" for n, r in res.parts.items())
        print(f"{label:>12s}  {where}  {cfg.ways}-way {k}-shot: {res}{per}  ({cfg.episodes} episodes)")
        if run is not None:
            run.log(method=label, split=where, ways=cfg.ways, shots=k, **res.as_dict())
    return out


def run_evaluate(cfg: EvaluateConfig) -> None:
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    zoo = None
    if cfg.zoo:
        from dfmeta.zoo import load_zoo
        zoo = load_zoo(cfg.zoo)
        if warning := zoo.dataset_warning(dataset_names(cfg.dataset)):
            print(warning, flush=True)
    channels = zoo[0].in_channels if zoo is not None and len(zoo) else None
    splits = load_domains(cfg.dataset, cfg.split, cfg.data_root, cfg.image_size or None, channels)
    cfg.check_episodes(splits)
    inp = BaselineInput(cfg.arch, cfg.ways, splits[0].image_size, splits[0].channels, cfg.seed, zoo, device)
    if zoo is not None:
        print(f"{cfg.method}: building the initialisation from the zoo's {len(zoo)} teachers", flush=True)
    init = BASELINES[cfg.method](inp)
    run = RunDir.new(cfg.out_dir, cfg.dataset, cfg.method, cfg.seed, cfg)
    run.record_environment(device)
    try:
        results = evaluate_init(init, cfg, splits, device, run, cfg.method)
    except DfmetaError:
        run.discard_if_unused()  # failed before its first result: leave no run directory behind
        raise
    run.write_json("results.json", {"method": cfg.method, "split": cfg.split, "results": results})
    print(f"run directory: {run.path}")


COMMANDS = [Command("evaluate", "Fine-tune a meta-initialisation on seeded episodes; mean accuracy and 95% CI.",
                    EvaluateConfig, run_evaluate)]
