"""The selected meta-model of a meta-training run (its ``best.pt``, chosen on meta-val), to evaluate again.

``dfmeta evaluate --meta-model RUN`` scores it on other episodes: another K, another dataset (cross-domain), more
episodes. Its architecture, way count, channels and image size are the run's; they are read from the run's config
and checked against the stored tensors before any data is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dfmeta.baselines import Initialisation
from dfmeta.data.domains import dataset_names
from dfmeta.data.registry import DATASETS
from dfmeta.errors import DfmetaError
from dfmeta.nets import build, head_names, params_of
from dfmeta.runs import atomic_write, is_torch_file, read_json_object

PROTOCOL = ("episodes", "queries", "eval_steps", "eval_lr", "episode_seed")
"""The evaluation settings a run's meta-test used that scoring its model again keeps unless told otherwise."""

SOURCE_RECORD = "meta_model.json"
"""An evaluation's record of the meta-model it scores: the run's path and method, the epoch selected, and the
sha256 of its ``best.pt`` (a resume checks it: the source run may have gone on and selected another model)."""


@dataclass(frozen=True)
class SelectedModel:
    """What evaluation needs of a run's selected meta-model."""

    run: Path
    method: str
    arch: str
    dataset: str
    """The dataset it was meta-trained for (the default to evaluate on)."""
    n_way: int
    channels: int
    image_size: int
    params: dict[str, torch.Tensor]
    sha256: str
    selected_epoch: int | None
    protocol: dict
    """The run's meta-test protocol (:data:`PROTOCOL` fields of its config): the default of a new evaluation."""

    def initialisation(self, device: torch.device) -> Initialisation:
        model = build(self.arch, self.n_way, self.image_size, self.channels, bn="batch").to(device)
        return Initialisation(model, {k: v.to(device) for k, v in self.params.items()})


def _method(run: Path, config: dict) -> str:
    results = run / "results.json"
    if results.is_file() and isinstance(m := read_json_object(results).get("method"), str):
        return m
    from dfmeta.report.collect import method_of_config
    return method_of_config(config) or "meta-model"


def _selected_epoch(run: Path) -> int | None:
    """The epoch whose model ``best.pt`` holds: from results.json, else the checkpoint's ``best`` (unfinished)."""
    results = run / "results.json"
    if results.is_file():
        return read_json_object(results).get("selected_epoch")
    if is_torch_file(run / "checkpoint.pt"):
        try:
            return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["best"]["epoch"]
        except Exception:  # noqa: BLE001 - the epoch is provenance only
            return None
    return None


def _image_size(run: Path, config: dict) -> int:
    """The run's image size: its ``image_size``, else its datasets' own (they agree, or the run set one)."""
    if int(config.get("image_size") or 0):
        return int(config["image_size"])
    sizes = {DATASETS[n].image_size for n in dataset_names(str(config.get("dataset", ""))) if n in DATASETS}
    if len(sizes) != 1:
        raise DfmetaError(f"{run / 'config.json'}: cannot tell the meta-model's image size from dataset "
                          f"{config.get('dataset')!r} and image_size 0")
    return sizes.pop()


def load_selected(run_dir: str) -> SelectedModel:
    """The selected meta-model of meta-training run ``run_dir``; a one-line error where it is none or has no
    ``best.pt`` yet (it is written at the first meta-validation)."""
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise DfmetaError(f"{run}: not a run directory (no config.json)")
    config = read_json_object(run / "config.json")
    if "val_every" not in config or not isinstance(config.get("arch"), str):
        raise DfmetaError(f"{run}: not a meta-training run (dfmeta train, purer, bidf-mkd, dro, maml-real); its "
                          "config.json has no val_every/arch")
    best = run / "best.pt"
    if not best.is_file():
        raise DfmetaError(f"{best}: missing; the run has not validated yet (best.pt is written at the first "
                          "meta-validation)")
    if not is_torch_file(best):
        raise DfmetaError(f"{best}: not a whole torch file (cut short or overwritten)")
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    try:
        params = torch.load(best, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing error
        raise DfmetaError(f"{best}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(params, dict) or not all(isinstance(v, torch.Tensor) for v in params.values()):
        raise DfmetaError(f"{best}: expected a dict of tensors (parameter name -> tensor)")
    arch, size = config["arch"], _image_size(run, config)
    convs = [v for v in params.values() if v.dim() == 4]
    probe = build(arch, 2, size, convs[0].shape[1] if convs else 3, bn="batch")
    heads = [params.get(k) for k in head_names(probe) if k.endswith("weight")]
    if not convs or not heads or heads[0] is None:
        raise DfmetaError(f"{best}: does not hold a {arch} meta-model (no convolution or head weights)")
    sel = SelectedModel(run, _method(run, config), arch, str(config.get("dataset", "")), int(heads[0].shape[0]),
                        int(convs[0].shape[1]), size, params, digest, _selected_epoch(run),
                        {k: config[k] for k in PROTOCOL if k in config})
    want = params_of(build(arch, sel.n_way, size, sel.channels, bn="batch"))
    wrong = [k for k in want.keys() | params.keys() if k not in want or k not in params
             or want[k].shape != params[k].shape]
    if wrong:
        raise DfmetaError(f"{best}: its tensors do not fit a {sel.n_way}-way {arch} on {size}px {sel.channels}-channel "
                          f"images (first misfit: {sorted(wrong)[0]})")
    return sel


def record_source(run_dir: Path, sel: SelectedModel) -> None:
    """Write the evaluation's :data:`SOURCE_RECORD`."""
    atomic_write(run_dir / SOURCE_RECORD, json.dumps({"run": str(sel.run), "method": sel.method,
                                                      "selected_epoch": sel.selected_epoch,
                                                      "sha256": sel.sha256}, indent=1) + "\n")


def check_source(run_dir: Path, sel: SelectedModel) -> None:
    """Before an evaluation is continued: ``sel`` must be the meta-model it started with (same ``best.pt``)."""
    record = run_dir / SOURCE_RECORD
    if record.is_file() and read_json_object(record).get("sha256") != sel.sha256:
        raise DfmetaError(f"{sel.run / 'best.pt'}: not the meta-model {run_dir} started with (its sha256 differs: "
                          "the run went on and selected another, or another run was named); start a new evaluation")


__all__ = ["PROTOCOL", "SOURCE_RECORD", "SelectedModel", "check_source", "load_selected", "record_source"]
