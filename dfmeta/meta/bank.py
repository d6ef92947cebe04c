"""Memory bank of recovered tasks for cross-task replay (Algorithm 1, step 6).

The bank keeps the newest ``capacity`` recovered tasks (FIFO). A class is identified by (teacher, label): the same
teacher class recovered at two epochs is one class with the images of both. Interpolated tasks recombine classes
drawn across all stored tasks into new N-way tasks (the authors' recombination; no pixel mixing). With ``pooled``
a class is the teacher's dataset class instead (the authors' code keeps its image pool per dataset class id), so
the images of one dataset class recovered by several teachers form one class. ``distinct`` keeps the teachers'
classes but draws no task that holds one dataset class twice (under two labels). ``one-copy`` draws dataset classes
as ``pooled`` does (uniformly, none twice), each shown by one teacher's copy of it (no mixing of generators' images).
``distinct-pooled`` draws classes as ``distinct`` does and shows each by its pooled images (all stored teachers'
copies of its dataset class): pooled's mixing of generators' images without pooled's draw.
"""

from __future__ import annotations

import pickle
import zlib
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from dfmeta.errors import DfmetaError, reason

ReplayMix = Literal["across", "within", "pooled", "distinct", "one-copy", "distinct-pooled"]
"""How replay tasks draw their classes from the memory bank (see :class:`MemoryBank`)."""
NAMED_MIXES = ("pooled", "distinct", "one-copy", "distinct-pooled")
"""Mixes that need each stored class's dataset class (its name)."""
CUE_SCOPES = ("class", "task", "stored")
CUE_KINDS = ("colour", "pattern")
PATTERN_GRID = 4
"""A ``pattern`` cue is a PATTERN_GRID x PATTERN_GRID grid per channel, bilinearly upsampled to the image size."""
MAX_REDRAWS = 100
"""Rounds of redrawing ``distinct`` tasks before the bank is taken as unable to supply them."""


class TaskLike(Protocol):
    """What the bank needs of a recovered task (e.g. ``dfmeta.recover.RecoveredTask``)."""

    images: Tensor
    labels: Tensor
    teacher: int


def draw_tasks(counts: Tensor, n_tasks: int, n_way: int, need: int, generator: torch.Generator,
               source: str, blocks: Tensor | None = None, names: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Draw ``n_tasks`` tasks of ``n_way`` distinct classes with ``need`` distinct images each, from a pool whose
    class ``c`` owns ``counts[c]`` consecutive rows (classes in order). With ``blocks`` (a block id per class, e.g.
    its teacher) all classes of a task come from one block, drawn uniformly among the blocks that can supply them.
    With ``names`` (a dataset-class id per class) a task draws ``n_way`` distinct names uniformly among those with
    a class that can supply them, then for each name one of its classes uniformly.
    Returns the classes ``[T, N]`` and the pool rows ``[T, N, need]``, drawn with ``generator`` on its device;
    ``source`` names the pool in errors."""
    eligible = torch.nonzero(counts >= need).flatten()
    if len(eligible) < n_way:
        raise DfmetaError(f"{source}: {n_way}-way tasks need {n_way} classes with >= K + Q = {need} images, "
                          f"{len(eligible)} have that many")
    max_count = int(counts[eligible].max())
    dev = generator.device
    n_names = len(torch.unique(names[eligible.to(names.device)])) if names is not None else n_way
    if n_names < n_way:
        raise DfmetaError(f"{source}: {n_way}-way tasks need {n_way} dataset classes with >= K + Q = {need} "
                          f"images in one teacher's copy, {n_names} have that many")
    starts = (torch.cumsum(counts, 0) - counts).to(dev)
    counts_d, eligible = counts.to(dev), eligible.to(dev)
    keys = torch.rand(n_tasks, len(eligible), generator=generator, device=dev)
    if blocks is not None:
        block = blocks.to(dev)[eligible]                                            # block of each eligible class
        full = torch.nonzero(torch.bincount(block) >= n_way).flatten()
        if len(full) == 0:
            raise DfmetaError(f"{source}: {n_way}-way tasks from one teacher need a teacher with {n_way} classes of "
                              f">= K + Q = {need} images; none has")
        chosen = full[torch.randint(len(full), (n_tasks,), generator=generator, device=dev)]
        keys.masked_fill_(block != chosen.unsqueeze(1), 2.0)
    if names is not None:
        name = names.to(dev)[eligible]                                              # name of each eligible class
        name_keys = torch.rand(n_tasks, int(names.max()) + 1, generator=generator, device=dev)
        name_keys.masked_fill_(torch.bincount(name, minlength=name_keys.shape[1]) == 0, 2.0)
        chosen = name_keys.argsort(1)[:, :n_way]                                    # [T, N] names
        copy = keys.unsqueeze(1).masked_fill(name != chosen.unsqueeze(-1), 2.0)   # [T, N, eligible]
        cls = eligible[copy.argmin(-1)]                                             # one copy of each name
    else:
        cls = eligible[keys.argsort(1)[:, :n_way]]                                  # [T, N]
    return cls, draw_rows(counts_d, starts, cls, need, max_count, generator)


def draw_rows(counts: Tensor, starts: Tensor, cls: Tensor, need: int, max_count: int,
              generator: torch.Generator) -> Tensor:
    """``need`` distinct pool rows of each class of ``cls`` ``[T, N]`` (class ``c`` owns ``counts[c]`` rows from
    ``starts[c]``; ``max_count`` >= every count drawn from), uniformly: rows ``[T, N, need]``."""
    rows = torch.rand(*cls.shape, max_count, generator=generator, device=generator.device)
    rows.masked_fill_(torch.arange(max_count, device=rows.device) >= counts[cls].unsqueeze(-1), 2.0)
    return starts[cls].unsqueeze(-1) + rows.argsort(-1)[..., :need]


def split_tasks(x: Tensor, k_shot: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images ``[T, N, K+Q, ...]`` (class-major) to support ``[T, N*K, ...]`` with labels ``[T, N*K]`` and query
    ``[T, N*Q, ...]`` with labels ``[T, N*Q]``; labels are the class position ``0..N-1``."""
    n_tasks, n_way, need = x.shape[:3]
    y = torch.arange(n_way, device=x.device).view(1, n_way, 1).expand(n_tasks, n_way, need)
    shape = x.shape[3:]
    return (x[:, :, :k_shot].reshape(n_tasks, n_way * k_shot, *shape), y[:, :, :k_shot].reshape(n_tasks, -1),
            x[:, :, k_shot:].reshape(n_tasks, -1, *shape), y[:, :, k_shot:].reshape(n_tasks, -1))


def cast_shape(kind: str, channels: int) -> tuple[int, ...]:
    """The shape of one unit cast's random values: per channel one (``colour``) or a grid (``pattern``)."""
    return (channels,) if kind == "colour" else (channels, PATTERN_GRID, PATTERN_GRID)


def stored_cast_draw(identity: Hashable, shape: tuple[int, ...]) -> Tensor:
    """The unit cast values of one stored class for the whole run (``cue_scope`` stored), seeded by its identity."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(repr(identity).encode())))


def expand_casts(draws: Tensor, image: Sequence[int], kind: str) -> Tensor:
    """Unit cast values ``[..., *cast_shape]`` as casts that add to images ``[..., C, H, W]``: ``[..., C, 1, 1]``
    (colour) or the grids bilinearly upsampled to ``[..., C, H, W]`` (pattern)."""
    if kind == "colour":
        return draws[..., None, None]
    grids = draws.reshape(-1, *draws.shape[-3:])
    flat = torch.nn.functional.interpolate(grids, size=tuple(image[1:]), mode="bilinear", align_corners=False)
    return flat.view(*draws.shape[:-3], *image)


class MemoryBank:
    """FIFO bank of recovered tasks (images ``[n, C, H, W]`` as the meta-model takes them, e.g. normalised, kept on
    their device; labels; teacher).

    ``mix``: interpolated tasks draw their classes ``across`` all stored tasks (the paper), or ``within`` one
    teacher's classes (an ablation: no task mixes the images of two teachers' generators), or across all stored
    tasks with ``pooled`` classes (the authors' code: a class is a dataset class, named at :meth:`add`, and holds
    the images every stored teacher recovered for it), or ``across`` without the tasks that hold one dataset class
    twice (``distinct``: uniform over the other tasks, by redrawing), or dataset classes drawn as ``pooled`` draws
    them, each shown by one stored teacher's copy of it, drawn uniformly (``one-copy``), or classes drawn as
    ``distinct`` draws them, each shown by the pooled images of its dataset class (``distinct-pooled``). ``distinct``,
    ``one-copy`` and ``distinct-pooled`` are ablations that take pooled's changes apart.

    ``cue``: add to every image of a task's class one per-channel offset, drawn per task and class from N(0, cue^2)
    (an ablation: a colour cast that tells a task's classes apart without their content, as a generator's style can;
    0: off, the images as stored). ``cue_scope`` ``task`` draws one offset per task for all its classes instead (the
    control: the same shift of the images, nothing that tells the classes apart); ``stored`` gives each stored class
    (its identity: teacher and label, or class name when pooled) one offset for the whole run, the same in every
    task that draws it, as a generator's style stays with the classes it recovered. ``cue_kind`` ``pattern`` makes
    each cast a smooth spatial pattern instead of a constant (per channel a ``PATTERN_GRID``-square grid of N(0,
    cue^2) values, bilinearly upsampled to the image): the spatial part of a style rather than its colour.
    """

    MIXES = ReplayMix.__args__

    def __init__(self, capacity: int = 20, mix: str = "across", cue: float = 0.0, cue_scope: str = "class",
                 cue_kind: str = "colour") -> None:
        if capacity < 1:
            raise DfmetaError(f"memory bank: capacity must be >= 1, got {capacity}")
        if not cue >= 0:
            raise DfmetaError(f"memory bank: cue must be >= 0, got {cue}")
        if cue_scope not in CUE_SCOPES:
            raise DfmetaError(f"memory bank: cue_scope must be class, task or stored; got {cue_scope!r}")
        if cue_kind not in CUE_KINDS:
            raise DfmetaError(f"memory bank: cue_kind must be colour or pattern; got {cue_kind!r}")
        if mix not in self.MIXES:
            raise DfmetaError(f"memory bank: mix must be one of {', '.join(self.MIXES)}; got {mix!r}")
        self.capacity, self.mix, self.cue, self.cue_scope, self.cue_kind = capacity, mix, cue, cue_scope, cue_kind
        self._tasks: list[dict[str, Any]] = []
        self._pool: tuple[Tensor, Tensor, Tensor, list[Hashable]] | None = None

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: TaskLike, names: Sequence[str] | None = None) -> None:
        """Store a recovered task; the oldest one leaves when the bank is full. ``names``: the dataset class of each
        of the teacher's labels (``names[label]``, e.g. ``"cifar-fs/cloud"``), needed by the ``pooled`` mix."""
        self._store(task.images, task.labels, task.teacher, names)
        if len(self._tasks) > self.capacity:
            self._tasks.pop(0)

    def _store(self, images: Tensor, labels: Tensor, teacher: int, names: Sequence[str] | None) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels) or len(images) == 0:
            raise DfmetaError(f"memory bank: expected images [n, C, H, W] and labels [n], got "
                              f"{list(images.shape)} and {list(labels.shape)}")
        if labels.dtype.is_floating_point or int(labels.min()) < 0:
            raise DfmetaError("memory bank: labels must be non-negative integers")
        if self.mix in NAMED_MIXES and (names is None or len(names) <= int(labels.max())
                                                   or len(set(names)) != len(names)):
            raise DfmetaError(f"memory bank: the {self.mix} mix needs a distinct class name for each of teacher "
                              f"{teacher}'s labels 0..{int(labels.max())}, got {names!r}")
        if self._tasks:
            ref = self._tasks[0]["images"]
            if ref.shape[1:] != images.shape[1:] or ref.device != images.device or ref.dtype != images.dtype:
                raise DfmetaError(f"memory bank: images {list(images.shape[1:])} {images.dtype} on {images.device} "
                                  f"do not match stored {list(ref.shape[1:])} {ref.dtype} on {ref.device}")
        self._tasks.append({"images": images.detach(), "labels": labels.detach().to(images.device, torch.long),
                            "teacher": int(teacher), "names": None if names is None else [str(n) for n in names]})
        self._pool = None

    @property
    def classes(self) -> list[Hashable]:
        """Distinct classes of the stored tasks, sorted: (teacher, label) pairs, or class names when pooled."""
        return self._build()[3]

    def _identity(self, task: dict[str, Any], label: int) -> Hashable:
        return task["names"][label] if self.mix == "pooled" else (task["teacher"], label)

    def _build(self) -> tuple[Tensor, Tensor, Tensor, list[Hashable]]:
        """(all images, image rows sorted by class, per-class image counts on CPU, class identities); cached."""
        if self._pool is None:
            if not self._tasks:
                raise DfmetaError("memory bank is empty")
            per_task = [[self._identity(t, c) for c in t["labels"].tolist()] for t in self._tasks]
            classes = sorted({c for ids in per_task for c in ids})
            index = {c: i for i, c in enumerate(classes)}
            ids = torch.tensor([index[c] for task_ids in per_task for c in task_ids])
            images = torch.cat([t["images"] for t in self._tasks])
            order = torch.argsort(ids, stable=True).to(images.device)
            self._pool = (images, order, torch.bincount(ids, minlength=len(classes)), classes)
        return self._pool

    def sample_tasks(self, n_tasks: int, n_way: int, k_shot: int, n_query: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Interpolated tasks: each draws ``n_way`` distinct classes (see ``mix``), then ``k_shot`` support and
        ``n_query`` query images of each (without replacement). Returns xs ``[T, N*K, C, H, W]``, ys ``[T, N*K]``,
        xq ``[T, N*Q, C, H, W]``, yq ``[T, N*Q]`` (images as stored, grouped by class; labels 0..N-1). Random draws use
        ``generator`` on its device, the gather happens on the images' device; deterministic given the generator.
        """
        if min(n_tasks, n_way, k_shot, n_query) < 1:
            raise DfmetaError(f"memory bank: n_tasks, n_way, k_shot, n_query must be >= 1, got "
                              f"{n_tasks}, {n_way}, {k_shot}, {n_query}")
        images, order, counts, classes = self._build()
        blocks = torch.tensor([te for te, _ in classes]) if self.mix == "within" else None
        names = self._name_ids() if self.mix == "one-copy" else None
        source = f"memory bank ({len(classes)} classes in {len(self)} tasks)"
        cls, rows = draw_tasks(counts, n_tasks, n_way, k_shot + n_query, generator, source, blocks, names)
        if self.mix in ("distinct", "distinct-pooled"):
            cls, rows = self._redraw_repeats(cls, rows, counts, k_shot + n_query, generator, source)
        if self.mix == "distinct-pooled":
            order, rows = self._pooled_rows(cls, k_shot + n_query, generator)
        x = images[order[rows.to(images.device)]]                                       # [T, N, K+Q, C, H, W]
        if self.cue:  # drawn after the rows: the same generator gives the same images, cast or not
            x = x + (self.cue * self._casts(cls, x.shape[3:], generator)).to(x.device, x.dtype)
        return split_tasks(x, k_shot)

    def _casts(self, cls: Tensor, image: torch.Size, generator: torch.Generator) -> Tensor:
        """Unit casts of the drawn classes ``cls`` [T, N] for images of shape ``image`` (C, H, W), by ``cue_scope``
        and ``cue_kind``: [T, N or 1, 1, C, 1, 1] (colour) or [T, N or 1, 1, C, H, W] (pattern)."""
        shape = cast_shape(self.cue_kind, image[0])
        if self.cue_scope == "stored":  # one per class identity, seeded by it: no draw from ``generator``
            draws = torch.stack([stored_cast_draw(c, shape) for c in self._build()[3]])[cls.cpu()]
        else:
            ways = cls.shape[1] if self.cue_scope == "class" else 1
            draws = torch.randn((cls.shape[0], ways, *shape), generator=generator, device=generator.device)
        return expand_casts(draws, image, self.cue_kind)[:, :, None]

    def _pooled_rows(self, cls: Tensor, need: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Image rows sorted by dataset class, and ``need`` of them drawn uniformly from each drawn (teacher, label)
        class's dataset class, i.e. from all stored teachers' copies of it: ``[T, N, need]``."""
        _, order, counts, _ = self._build()
        name_of = self._name_ids()
        row_names = name_of.repeat_interleave(counts)                  # dataset class of each class-sorted row
        by_name = order[torch.argsort(row_names, stable=True).to(order.device)]
        name_counts = torch.bincount(row_names, minlength=len(name_of))
        dev = generator.device
        starts = (torch.cumsum(name_counts, 0) - name_counts).to(dev)
        names = name_of.to(dev)[cls]
        return by_name, draw_rows(name_counts.to(dev), starts, names, need, int(name_counts.max()), generator)

    def _redraw_repeats(self, cls: Tensor, rows: Tensor, counts: Tensor, need: int, generator: torch.Generator,
                        source: str) -> tuple[Tensor, Tensor]:
        """The classes and rows of the first ``len(cls)`` tasks, in drawing order, that hold no dataset class twice:
        the tasks drawn, then as many more rounds as it takes (each task is uniform over all tasks, so the kept ones
        are uniform over the repeat-free ones)."""
        name_of = self._name_ids().to(cls.device)
        kept, n_tasks = [], len(cls)
        for _ in range(MAX_REDRAWS):
            named = name_of[cls].sort(1).values
            ok = (named[:, 1:] != named[:, :-1]).all(1)
            kept.append((cls[ok], rows[ok]))
            if sum(len(k) for k, _ in kept) >= n_tasks:
                return torch.cat([k for k, _ in kept])[:n_tasks], torch.cat([r for _, r in kept])[:n_tasks]
            cls, rows = draw_tasks(counts, n_tasks, cls.shape[1], need, generator, source)
        raise DfmetaError(f"{source}: fewer than 1 in {MAX_REDRAWS} drawn tasks hold {cls.shape[1]} distinct "
                          "dataset classes")

    def _name_ids(self) -> Tensor:
        """The dataset class of each (teacher, label) class of :attr:`classes`, as ids in sorted-name order."""
        names = {(t["teacher"], c): t["names"][c] for t in self._tasks for c in range(len(t["names"]))}
        index = {n: i for i, n in enumerate(sorted(set(names.values())))}
        return torch.tensor([index[names[c]] for c in self._build()[3]])

    def state_dict(self) -> dict[str, Any]:
        """Capacity and the stored tasks, oldest first (tensors as stored)."""
        return {"capacity": self.capacity, "tasks": [dict(t) for t in self._tasks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (exact resume: same tasks in the same order)."""
        if not isinstance(state, dict) or "tasks" not in state or "capacity" not in state:
            raise DfmetaError("memory bank: state must be a dict with 'capacity' and 'tasks'")
        if len(state["tasks"]) > state["capacity"]:
            raise DfmetaError(f"memory bank: state holds {len(state['tasks'])} tasks, capacity {state['capacity']}")
        if state["capacity"] < 1:
            raise DfmetaError(f"memory bank: capacity must be >= 1, got {state['capacity']}")
        self.capacity, self._tasks, self._pool = int(state["capacity"]), [], None
        for t in state["tasks"]:
            self._store(t["images"], t["labels"], t["teacher"], t.get("names"))


def stored_bank(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint of the TGR run directory ``run`` and its memory bank's state (:meth:`MemoryBank.state_dict`),
    read on the CPU; a clear error where there is none or its tasks carry no class names."""
    path = Path(run) / "checkpoint.pt"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        bank = ck["extra"]["bank"]
    except (OSError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as e:
        raise DfmetaError(f"{path}: expected a TGR checkpoint with a memory bank ({reason(e)})") from e
    if any(task.get("names") is None for task in bank["tasks"]):
        raise DfmetaError(f"{path}: the bank's tasks carry no class names (a run written before they were kept)")
    return ck, bank
