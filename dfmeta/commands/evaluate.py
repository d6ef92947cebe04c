"""``dfmeta evaluate``: score a baseline or a trained meta-model on seeded few-shot episodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dfmeta.baselines import BASELINES, NEEDS_ZOO, BaselineInput, Initialisation
from dfmeta.cli import Command
from dfmeta.commands.common import DataConfig, EvalFields
from dfmeta.data.registry import load_split
from dfmeta.errors import DfmetaError
from dfmeta.evaluate import Evaluator
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
        if self.method not in BASELINES:
            raise DfmetaError(f"field 'method': unknown method {self.method!r}; expected one of: "
                              f"{', '.join(sorted(BASELINES))}")
        if self.method in NEEDS_ZOO and not self.zoo:
            raise DfmetaError(f"method {self.method!r} needs a zoo: pass --zoo DIR")


def evaluate_init(init: Initialisation, cfg: EvalFields, split, device, run: RunDir | None,
                  label: str) -> dict[int, dict]:
    """Evaluate one initialisation at every K of ``cfg.shots``; log and return ``{K: result dict}``."""
    out = {}
    for k in cfg.shots:
        ev = Evaluator(split, cfg.ways, k, cfg.queries, cfg.episodes, cfg.episode_seed, cfg.eval_steps, cfg.eval_lr, device,
                       cfg.episode_batch or None)
        res = ev(init.model, init.params, init.head)
        out[k] = res.as_dict()
        print(f"{label:>12s}  {split.name}  {cfg.ways}-way {k}-shot: {res}  ({cfg.episodes} episodes)")
        if run is not None:
            run.log(method=label, split=split.name, ways=cfg.ways, shots=k, **res.as_dict())
    return out


def run_evaluate(cfg: EvaluateConfig) -> None:
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    split = load_split(cfg.dataset, cfg.split, cfg.data_root, cfg.image_size or None)
    zoo = None
    if cfg.zoo:
        from dfmeta.zoo import load_zoo
        zoo = load_zoo(cfg.zoo)
    inp = BaselineInput(cfg.arch, cfg.ways, split.image_size, split.channels, cfg.seed, zoo, device)
    init = BASELINES[cfg.method](inp)
    run = RunDir.new(cfg.out_dir, cfg.dataset, cfg.method, cfg.seed, cfg)
    results = evaluate_init(init, cfg, split, device, run, cfg.method)
    run.write_json("results.json", {"method": cfg.method, "split": cfg.split, "results": results})
    print(f"run directory: {run.path}")


COMMANDS = [Command("evaluate", "Fine-tune a meta-initialisation on seeded episodes; mean accuracy and 95% CI.",
                    EvaluateConfig, run_evaluate)]
