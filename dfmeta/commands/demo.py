"""``dfmeta demo``: the quick start's main job, end to end on the embedded dataset (no files, no GPU).

Builds a small teacher zoo, scores Finetune and the zoo baselines, meta-trains TGR, and prints one results table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dfmeta.baselines import BASELINES, BaselineInput
from dfmeta.cli import Command
from dfmeta.commands.evaluate import evaluate_init
from dfmeta.commands.common import EvalFields
from dfmeta.config import make, require
from dfmeta.data.registry import load_split
from dfmeta.meta.trainer import TrainConfig, Trainer
from dfmeta.runs import RunDir, expect_directory, resolve_device, seed_everything, set_threads


@dataclass(frozen=True)
class DemoConfig(EvalFields):
    """The quick start at CPU scale (every number can be raised towards the paper's)."""

    seed: int = 0
    """Seed of the zoo, the training and the baselines."""
    device: str = "auto"
    """Torch device: auto, cpu, cuda."""
    threads: int = 1
    """CPU threads for torch (0: torch's default); one is fastest for these small ops on a shared machine."""
    out_dir: str = "runs"
    """Parent folder of the run directory."""
    teachers: int = 16
    """Teachers in the zoo."""
    teacher_epochs: int = 10
    """Training epochs per teacher."""
    epochs: int = 30
    """TGR meta-training epochs."""
    groups: int = 2
    """TGR task groups."""
    teachers_per_epoch: int = 4
    """TGR teachers per epoch (m)."""
    rec_steps: int = 30
    """Generator steps per recovered task."""
    rec_per_class: int = 10
    """Recovered images per class."""
    rec_nf: int = 16
    """Generator width (the paper's 64 is slow on a CPU)."""
    image_size: int = 16
    """Image size of the embedded dataset (32 is the paper's CIFAR size; 16 is 4x cheaper on a CPU)."""
    episodes: int = 100
    """Evaluation episodes per setting."""
    val_every: int = 10
    """Validate TGR every this many epochs."""

    def validate(self) -> None:
        require([
            (self.teachers >= self.teachers_per_epoch, "teachers", f">= teachers_per_epoch ({self.teachers_per_epoch})"),
            (self.groups <= self.teachers, "groups", f"<= teachers ({self.teachers})"),
            (self.teacher_epochs >= 1, "teacher_epochs", ">= 1"),
            (self.rec_per_class >= 2, "rec_per_class", ">= 2 (a 1-shot replay task takes one support and one query "
                                                       "image per class)"),
        ])
        expect_directory(self.out_dir, "--out-dir")
        self.tgr_config("zoo", "runs")  # TGR's own checks, before the zoo is built

    def tgr_config(self, zoo: str, out_dir: str) -> TrainConfig:
        """The TGR run of the demo (validated)."""
        return make(TrainConfig, dict(
            dataset="embedded", seed=self.seed, device=self.device, threads=self.threads, out_dir=out_dir, zoo=zoo,
            epochs=self.epochs, groups=self.groups, teachers_per_epoch=self.teachers_per_epoch,
            rec_steps=self.rec_steps, rec_per_class=self.rec_per_class, rec_nf=self.rec_nf,
            image_size=self.image_size, val_every=self.val_every, val_episodes=self.episodes, episodes=self.episodes,
            shots=self.shots, ways=self.ways, queries=self.queries, eval_steps=self.eval_steps, eval_lr=self.eval_lr,
            episode_batch=self.episode_batch, episode_seed=self.episode_seed, replay_max_batches=2, meta_batch=4,
            fisher_samples=10, small_groups="merge",
            replay_queries=self.rec_per_class - 1))  # 1-shot replay tasks from the recovered images alone


def run_demo(cfg: DemoConfig) -> None:
    from dfmeta.zoo import load_zoo
    from dfmeta.zoo.build import ZooRecipe, build_zoo

    t_start = time.perf_counter()
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    run = RunDir.new(cfg.out_dir, "embedded", "demo", cfg.seed, cfg)
    run.record_environment(device)
    print(f"run directory: {run.path}\n[1/3] building a zoo of {cfg.teachers} teachers on the embedded dataset")
    train_split = load_split("embedded", "train", image_size=cfg.image_size)
    build_zoo(run.path / "zoo", train_split, "embedded",
              ZooRecipe(teachers=cfg.teachers, epochs=cfg.teacher_epochs, batch_size=64), cfg.seed, device)
    zoo = load_zoo(run.path / "zoo")
    test = load_split("embedded", "test", image_size=cfg.image_size)
    rows: dict[str, dict[int, dict]] = {}
    print("[2/3] baselines on meta-test")
    for method in ("finetune", "best-model", "average", "ota"):
        if method not in BASELINES:
            continue
        inp = BaselineInput("conv4", cfg.ways, test.image_size, test.channels, cfg.seed, zoo, device)
        rows[method] = evaluate_init(BASELINES[method](inp), cfg, [test], device, run, method)
    print(f"[3/3] TGR: {cfg.epochs} epochs, m = {cfg.teachers_per_epoch}, c = {cfg.groups}")
    tcfg = cfg.tgr_config(str(run.path / "zoo"), str(run.path))
    res = Trainer(tcfg, RunDir(run.path / "tgr", tcfg)).fit()
    rows["tgr"] = {int(k): v for k, v in res["test"].items()}
    lines = ["| method | " + " | ".join(f"{cfg.ways}-way {k}-shot" for k in cfg.shots) + " |",
             "|---|" + "---|" * len(cfg.shots)]
    for method, r in rows.items():
        lines.append(f"| {method} | " + " | ".join(f"{r[k]['acc']:.2f} ± {r[k]['ci95']:.2f}" for k in cfg.shots) + " |")
    table = "\n".join(lines)
    (Path(run.path) / "results.md").write_text(
        f"embedded dataset, meta-test, {cfg.episodes} episodes per cell (mean ± 95% CI)\n\n{table}\n")
    print(f"\nembedded meta-test, {cfg.episodes} episodes (mean ± 95% CI):\n{table}\n"
          f"total {time.perf_counter() - t_start:.0f} s; results in {run.path}")


COMMANDS = [Command("demo", "The quick start: zoo, baselines and TGR end to end on the embedded dataset.",
                    DemoConfig, run_demo)]
