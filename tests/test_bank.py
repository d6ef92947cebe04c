"""Memory bank: FIFO capacity, interpolated tasks across stored tasks, determinism, state round trip."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from dfmeta.errors import DfmetaError
from dfmeta.meta.bank import MemoryBank

_next_id = iter(range(1, 10**6))


def task(teacher: int, n_way: int = 5, per_class: int = 4):
    """A recovered task whose images encode (teacher, label, unique image id) in their first three pixels."""
    labels = torch.arange(n_way).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 1, 2, 2)
    images[:, 0, 0, 0] = teacher
    images[:, 0, 0, 1] = labels.float()
    images[:, 0, 1, 0] = torch.tensor([float(next(_next_id)) for _ in labels])
    return SimpleNamespace(images=images, labels=labels, teacher=teacher)


def decode(x):
    return x[..., 0, 0, 0].long(), x[..., 0, 0, 1].long(), x[..., 0, 1, 0].long()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_fifo_capacity():
    bank = MemoryBank(capacity=3)
    for t in range(5):
        bank.add(task(t))
    assert len(bank) == 3
    assert [t["teacher"] for t in bank.state_dict()["tasks"]] == [2, 3, 4]
    assert {te for te, _ in bank.classes} == {2, 3, 4}


def test_sample_shapes_labels_and_classes():
    bank = MemoryBank()
    for t in range(4):
        bank.add(task(t))
    xs, ys, xq, yq = bank.sample_tasks(50, 5, 2, 2, gen())
    assert xs.shape == (50, 10, 1, 2, 2) and xq.shape == (50, 10, 1, 2, 2)
    assert torch.equal(ys, torch.arange(5).repeat_interleave(2).expand(50, -1))
    assert torch.equal(yq, ys)
    te_s, lab_s, id_s = decode(xs)
    te_q, lab_q, id_q = decode(xq)
    cls_s = (te_s * 10 + lab_s).view(50, 5, 2)
    cls_q = (te_q * 10 + lab_q).view(50, 5, 2)
    assert (cls_s == cls_s[..., :1]).all() and (cls_q == cls_s[..., :1]).all()    # one class per label
    assert all(len(set(c.tolist())) == 5 for c in cls_s[..., 0])                   # distinct classes per task
    ids = torch.cat([id_s, id_q], 1)
    assert all(len(set(r.tolist())) == 20 for r in ids)                            # no image used twice
    assert max(len(set(r.tolist())) for r in te_s) > 1                             # classes mix stored tasks
    assert len(set(cls_s.flatten().tolist())) == 20                                # every class gets drawn


def test_within_teacher_tasks():
    bank = MemoryBank(mix="within")
    for t in (0, 1, 2):
        bank.add(task(t))
    bank.add(task(3, n_way=3))                                                     # cannot make a 5-way task alone
    xs, ys, xq, yq = bank.sample_tasks(60, 5, 2, 2, gen())
    te_s, lab_s, id_s = decode(xs)
    te_q, _, id_q = decode(xq)
    teachers = torch.cat([te_s, te_q], 1)
    assert bool((teachers == teachers[:, :1]).all())                              # one teacher per task
    assert set(teachers[:, 0].tolist()) == {0, 1, 2}                              # every able teacher drawn
    assert all(sorted(set(r.tolist())) == list(range(5)) for r in lab_s)          # its 5 classes, in some order
    assert len({tuple(r.tolist()) for r in lab_s.view(60, 5, 2)[..., 0]}) > 1      # labels permuted across tasks
    assert all(len(set(r.tolist())) == 20 for r in torch.cat([id_s, id_q], 1))     # no image used twice
    again = bank.sample_tasks(60, 5, 2, 2, gen())
    assert torch.equal(again[0], xs) and torch.equal(again[2], xq)
    small = MemoryBank(mix="within")
    small.add(task(0, n_way=3))
    small.add(task(1, n_way=3))
    with pytest.raises(DfmetaError, match="from one teacher"):
        small.sample_tasks(1, 5, 1, 1, gen())                                     # 6 classes, no teacher has 5
    with pytest.raises(DfmetaError, match="mix"):
        MemoryBank(mix="sideways")


def test_pooled_classes_join_teachers_of_one_dataset_class():
    """pooled: a class is a dataset class; two teachers that recovered 'b' make one class holding both teachers'
    images (the authors' per-class pool), while across keeps them apart."""
    names = {0: ["a", "b", "c"], 1: ["b", "d", "e"], 2: ["f", "g", "h"]}
    tasks = [task(t, n_way=3, per_class=5) for t in (0, 1, 2)]
    across, pooled = MemoryBank(), MemoryBank(mix="pooled")
    for t in tasks:
        across.add(t, names[t.teacher])
        pooled.add(t, names[t.teacher])
    assert len(across.classes) == 9 and pooled.classes == list("abcdefgh")
    xs, ys, xq, yq = pooled.sample_tasks(200, 5, 1, 4, gen())                       # "b" has 10 images
    te, lab, ids = (torch.cat([s.view(200, 5, 1), q.view(200, 5, 4)], 2) for s, q in zip(decode(xs), decode(xq)))
    per_class = [[{names[int(a)][int(b)] for a, b in zip(ta, la)} for ta, la in zip(te_t, lab_t)]
                 for te_t, lab_t in zip(te, lab)]                                  # [task][label] -> class names
    assert all(len(c) == 1 for row in per_class for c in row)                     # one dataset class per label
    assert all(len(set.union(*row)) == 5 for row in per_class)                     # 5 distinct dataset classes
    both = [te[i, j] for i, row in enumerate(per_class) for j, c in enumerate(row) if c == {"b"}]
    assert both and any(len(set(t.tolist())) == 2 for t in both)                  # 'b' mixes both teachers' images
    assert all(len(set(r.tolist())) == 25 for r in ids.view(200, -1))              # no image used twice
    with pytest.raises(DfmetaError, match="pooled mix needs a distinct class name"):
        pooled.add(task(3, n_way=3))                                               # no names
    with pytest.raises(DfmetaError, match="pooled mix needs a distinct class name"):
        pooled.add(task(3, n_way=3), ["x", "x", "y"])
    buf = io.BytesIO()
    torch.save(pooled.state_dict(), buf)
    buf.seek(0)
    other = MemoryBank(mix="pooled")
    other.load_state_dict(torch.load(buf))
    assert other.classes == pooled.classes
    assert all(torch.equal(u, v) for u, v in zip(other.sample_tasks(3, 5, 1, 2, gen()),
                                                 pooled.sample_tasks(3, 5, 1, 2, gen())))


SHARED = {0: ["a", "b", "c"], 1: ["b", "d", "e"], 2: ["a", "f", "g"]}
"""Three teachers' dataset classes: "a" and "b" recovered by two teachers each, 7 dataset classes in all."""


def named(bank: MemoryBank, n: int, names: dict[int, list[str]]) -> tuple[list[list[str]], torch.Tensor, torch.Tensor]:
    """``n`` 5-way 1+1-shot tasks: each label's dataset class, the teacher of each label, and the support images.
    Checks that every label's images come from one teacher class."""
    xs, _, xq, _ = bank.sample_tasks(n, 5, 1, 1, gen())
    te, lab, _ = (torch.cat([u.view(n, 5, 1), v.view(n, 5, 1)], 2) for u, v in zip(decode(xs), decode(xq)))
    assert bool((te == te[..., :1]).all()) and bool((lab == lab[..., :1]).all())  # one teacher class a label
    return [[names[int(t)][int(c)] for t, c in zip(te[i, :, 0], lab[i, :, 0])] for i in range(n)], te[..., 0], xs


def test_one_copy_draws_dataset_classes_uniformly_each_from_one_teacher():
    """one-copy: no task holds a dataset class twice, every dataset class is drawn equally often (5 of 7: 5/7 each,
    where distinct favours the classes two teachers recovered), a shared class's two copies about equally, a label's
    images from one teacher class; deterministic; too few dataset classes is a clear error."""
    banks = {mix: MemoryBank(mix=mix) for mix in ("one-copy", "distinct")}
    for t in (0, 1, 2):
        for bank in banks.values():
            bank.add(task(t, n_way=3, per_class=2), SHARED[t])
    drawn, teachers, xs = named(banks["one-copy"], 4000, SHARED)
    assert all(len(set(row)) == 5 for row in drawn)
    share = {c: sum(c in row for row in drawn) / len(drawn) for c in "abcdefg"}
    assert all(abs(p - 5 / 7) < 0.03 for p in share.values()), share
    d_drawn = named(banks["distinct"], 4000, SHARED)[0]
    assert sum("a" in row for row in d_drawn) / 4000 - sum("c" in row for row in d_drawn) / 4000 > 0.1
    from_0 = sum(int(t) == 0 for row, ts in zip(drawn, teachers) for c, t in zip(row, ts) if c == "a")
    assert abs(from_0 / sum(row.count("a") for row in drawn) - 0.5) < 0.04       # "a": teacher 0 or 2
    assert torch.equal(banks["one-copy"].sample_tasks(4000, 5, 1, 1, gen())[0], xs)  # deterministic
    with pytest.raises(DfmetaError, match="one-copy mix needs a distinct class name"):
        banks["one-copy"].add(task(3, n_way=3))
    narrow = MemoryBank(mix="one-copy")                                           # 6 classes, 4 dataset classes
    narrow.add(task(0, n_way=3, per_class=2), ["a", "b", "c"])
    narrow.add(task(1, n_way=3, per_class=2), ["a", "b", "d"])
    with pytest.raises(DfmetaError, match="need 5 dataset classes with >= K \\+ Q = 2 images"):
        narrow.sample_tasks(2, 5, 1, 1, gen())


def test_distinct_draws_no_dataset_class_twice_and_is_uniform_over_the_rest():
    """distinct: classes stay teachers' classes (a label's images come from one teacher), no task holds one dataset
    class twice, and the tasks kept are uniform over the repeat-free ones (a name's frequency matches enumeration);
    across, on the same bank, does draw repeats."""
    from itertools import combinations
    names = SHARED
    across, distinct = MemoryBank(), MemoryBank(mix="distinct")
    for t in (0, 1, 2):
        across.add(task(t, n_way=3, per_class=2), names[t])
        distinct.add(task(t, n_way=3, per_class=2), names[t])
    assert len(distinct.classes) == 9                                             # (teacher, label), as across
    drawn, _, xs = named(distinct, 4000, SHARED)
    assert all(len(set(row)) == 5 for row in drawn)
    assert any(len(set(row)) < 5 for row in named(across, 400, SHARED)[0])
    free = [c for c in combinations([n for t in (0, 1, 2) for n in names[t]], 5) if len(set(c)) == 5]
    for name in "abg":
        expected = sum(name in c for c in free) / len(free)
        assert abs(sum(name in row for row in drawn) / len(drawn) - expected) < 0.04, name
    assert torch.equal(distinct.sample_tasks(4000, 5, 1, 1, gen())[0], xs)           # deterministic
    with pytest.raises(DfmetaError, match="distinct mix needs a distinct class name"):
        distinct.add(task(3, n_way=3))
    narrow = MemoryBank(mix="distinct")                                           # 6 classes, 4 dataset classes
    narrow.add(task(0, n_way=3, per_class=2), ["a", "b", "c"])
    narrow.add(task(1, n_way=3, per_class=2), ["a", "b", "d"])
    with pytest.raises(DfmetaError, match="hold 5 distinct dataset classes"):
        narrow.sample_tasks(2, 5, 1, 1, gen())


def test_distinct_pooled_draws_as_distinct_and_shows_pooled_images():
    """distinct-pooled: the same dataset classes as distinct under the same generator (its draw, no class twice),
    each label's images drawn from all stored teachers' copies of its dataset class (a shared class mixes teachers
    in 2 of 3 labels: 2 images of 4, two per teacher), no image twice in a task; deterministic."""
    banks = {mix: MemoryBank(mix=mix) for mix in ("distinct-pooled", "distinct")}
    for t in (0, 1, 2):
        for bank in banks.values():
            bank.add(task(t, n_way=3, per_class=2), SHARED[t])
    assert banks["distinct-pooled"].classes == banks["distinct"].classes            # (teacher, label), as distinct
    n = 3000
    xs, _, xq, _ = banks["distinct-pooled"].sample_tasks(n, 5, 1, 1, gen())
    te, lab, ids = (torch.cat([u.view(n, 5, 1), v.view(n, 5, 1)], 2) for u, v in zip(decode(xs), decode(xq)))
    label_names = [[{SHARED[int(a)][int(b)] for a, b in zip(ta, la)} for ta, la in zip(te_t, lab_t)]
                   for te_t, lab_t in zip(te, lab)]
    assert all(len(c) == 1 for row in label_names for c in row)                     # one dataset class a label
    drawn = [[c.pop() for c in row] for row in label_names]
    assert drawn == named(banks["distinct"], n, SHARED)[0]                           # distinct's classes
    assert all(len(set(row)) == 5 for row in drawn)
    assert all(len(set(r.tolist())) == 10 for r in ids.view(n, -1))                 # no image used twice
    mixed = [len(set(te[i, j].tolist())) == 2 for i, row in enumerate(drawn) for j, c in enumerate(row) if c == "a"]
    assert abs(sum(mixed) / len(mixed) - 2 / 3) < 0.04
    assert all(len(set(te[i, j].tolist())) == 1 for i, row in enumerate(drawn) for j, c in enumerate(row)
               if c not in "ab")                                                   # one teacher's class
    assert torch.equal(banks["distinct-pooled"].sample_tasks(n, 5, 1, 1, gen())[0], xs)  # deterministic
    with pytest.raises(DfmetaError, match="distinct-pooled mix needs a distinct class name"):
        banks["distinct-pooled"].add(task(3, n_way=3))


def test_same_teacher_class_is_one_class():
    bank = MemoryBank()
    bank.add(task(7, n_way=2, per_class=3))
    bank.add(task(7, n_way=2, per_class=3))
    assert bank.classes == [(7, 0), (7, 1)]
    xs, _, xq, _ = bank.sample_tasks(4, 2, 1, 5, gen())                            # needs 6 images per class
    assert len(set(decode(xs)[2].flatten().tolist()) | set(decode(xq)[2].flatten().tolist())) > 6


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_deterministic_given_generator(device):
    bank = MemoryBank()
    for t in range(3):
        tk = task(t)
        bank.add(SimpleNamespace(images=tk.images.to(device), labels=tk.labels.to(device), teacher=t))

    def sample(seed):
        return bank.sample_tasks(6, 5, 1, 3, torch.Generator(device).manual_seed(seed))

    a, b, c = sample(1), sample(1), sample(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and a[0].device.type == device
    assert not torch.equal(a[0], c[0])


def test_state_dict_round_trip():
    bank = MemoryBank(capacity=4)
    for t in range(6):
        bank.add(task(t))
    buf = io.BytesIO()
    torch.save(bank.state_dict(), buf)
    buf.seek(0)
    other = MemoryBank()
    other.load_state_dict(torch.load(buf))
    assert other.capacity == 4 and len(other) == 4 and other.classes == bank.classes
    assert all(torch.equal(u, v) for u, v in zip(bank.sample_tasks(3, 5, 1, 2, gen()),
                                                 other.sample_tasks(3, 5, 1, 2, gen())))
    other.add(task(9))
    assert [t["teacher"] for t in other.state_dict()["tasks"]] == [3, 4, 5, 9]


def test_errors():
    bank = MemoryBank()
    with pytest.raises(DfmetaError):
        bank.sample_tasks(1, 5, 1, 1, gen())                                       # empty
    bank.add(task(0, n_way=3, per_class=4))
    with pytest.raises(DfmetaError):
        bank.sample_tasks(1, 5, 1, 1, gen())                                       # too few classes
    with pytest.raises(DfmetaError):
        bank.sample_tasks(1, 3, 2, 3, gen())                                       # too few images per class
    with pytest.raises(DfmetaError):
        bank.add(SimpleNamespace(images=torch.zeros(4, 1, 3, 3), labels=torch.zeros(4, dtype=torch.long), teacher=1))
    with pytest.raises(DfmetaError):
        bank.add(SimpleNamespace(images=torch.zeros(4, 1, 2, 2), labels=torch.zeros(3, dtype=torch.long), teacher=1))
    with pytest.raises(DfmetaError):
        MemoryBank(capacity=0)


@pytest.mark.parametrize("mix, scope", [("within", "class"), ("across", "class"), ("within", "task")])
def test_cue_casts_each_class_of_a_task_alike_and_leaves_the_draw(mix, scope):
    """cue: the same images as without it (the same generator), each (task, class) shifted by one offset per channel,
    support and query alike; offsets differ between the classes of a task (scope class) or are one per task (scope
    task, the control), with about the asked spread."""
    plain, cast = MemoryBank(mix=mix), MemoryBank(mix=mix, cue=0.5, cue_scope=scope)
    for t in range(4):
        tk = task(t)
        images = tk.images.repeat(1, 3, 1, 1)  # three channels, the same code in each
        for b in (plain, cast):
            b.add(SimpleNamespace(images=images, labels=tk.labels, teacher=t))
    n_tasks, n_way, k, q = 200, 5, 1, 3
    a, b = plain.sample_tasks(n_tasks, n_way, k, q, gen(3)), cast.sample_tasks(n_tasks, n_way, k, q, gen(3))
    assert torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
    shift_s = (b[0] - a[0]).view(n_tasks, n_way, k, 3, 4)       # support images are class-major
    shift_q = (b[2] - a[2]).view(n_tasks, n_way, q, 3, 4)
    offset = shift_s[:, :, :1, :, :1]                           # [T, N, 1, C, 1]
    close = dict(rtol=0, atol=1e-4)                             # float32 rounding of image codes up to ~1e3
    assert torch.allclose(shift_s, offset.expand_as(shift_s), **close)
    assert torch.allclose(shift_q, offset.expand_as(shift_q), **close)
    per_class = offset.flatten(2)                               # [T, N, C]
    gap = (per_class[:, 0] - per_class[:, 1]).abs()
    if scope == "class":
        assert gap.min() > 0                                    # the classes of a task are cast differently
    else:
        assert gap.max() < 1e-4                                 # one cast for the whole task
    assert 0.4 < float(per_class.std()) < 0.6


def test_stored_cue_stays_with_its_class():
    """cue_scope stored: each stored class keeps one offset in every task that draws it, in every call (a generator's
    style stays with its classes); the draws are the plain ones (the casts take no random numbers)."""
    plain, cast = MemoryBank(mix="across"), MemoryBank(mix="across", cue=0.5, cue_scope="stored")
    for t in range(4):
        tk = task(t)
        for b in (plain, cast):
            b.add(SimpleNamespace(images=tk.images.repeat(1, 3, 1, 1), labels=tk.labels, teacher=t))
    ga, gb = gen(3), gen(3)
    offsets: dict[tuple[int, int], list[torch.Tensor]] = {}
    for _ in range(2):
        a, b = plain.sample_tasks(50, 5, 1, 3, ga), cast.sample_tasks(50, 5, 1, 3, gb)
        assert torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
        for x, y in ((a[0], b[0]), (a[2], b[2])):
            teacher, label, _ = decode(x)
            shift = (y - x)[..., 0, 0]                                  # [T, images, C] at one pixel
            for key, s in zip(zip(teacher.flatten().tolist(), label.flatten().tolist()), shift.reshape(-1, 3)):
                offsets.setdefault(key, []).append(s)
    assert len(offsets) == 20
    first = {k: v[0] for k, v in offsets.items()}
    for k, v in offsets.items():
        assert all(torch.allclose(s, first[k], rtol=0, atol=1e-4) for s in v), k
    table = torch.stack(list(first.values()))
    assert torch.cdist(table, table).add(torch.eye(20)).min() > 0  # every class its own cast
    assert 0.3 < float(table.std()) < 0.7


@pytest.mark.parametrize("scope", ["class", "stored"])
def test_pattern_cue_is_one_smooth_pattern_per_class(scope):
    """cue_kind pattern: every image of a (task, class) gets one spatial pattern (varying over pixels, smooth, about
    the asked size), classes get different ones, a stored class keeps its pattern across tasks; the draws are the
    plain ones."""
    plain, cast = MemoryBank(mix="across"), MemoryBank(mix="across", cue=0.5, cue_scope=scope, cue_kind="pattern")
    for t in range(4):
        tk = task(t)
        images = torch.zeros(len(tk.labels), 3, 8, 8)
        images[:, 0, :2, :2] = tk.images[:, 0]                  # the code of task(), in an 8 x 8 image
        for bank in (plain, cast):
            bank.add(SimpleNamespace(images=images, labels=tk.labels, teacher=t))
    a, b = plain.sample_tasks(100, 5, 1, 3, gen(4)), cast.sample_tasks(100, 5, 1, 3, gen(4))
    assert torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
    shift_s, shift_q = (b[0] - a[0]).view(100, 5, 1, 3, 8, 8), (b[2] - a[2]).view(100, 5, 3, 3, 8, 8)
    pattern = shift_s[:, :, :1]                                  # [T, N, 1, C, H, W]
    close = dict(rtol=0, atol=1e-4)
    assert torch.allclose(shift_q, pattern.expand_as(shift_q), **close)
    p = pattern[:, :, 0]                                         # [T, N, C, H, W]
    assert float(p.flatten(3).std(-1).min()) > 0.02              # not a constant: it varies over the image
    step = (p[..., 1:, :] - p[..., :-1, :]).abs().mean() / (p - p.roll(4, -2)).abs().mean()
    assert float(step) < 0.5                                     # smooth: neighbours closer than far pixels
    assert 0.2 < float(p.std()) < 0.6
    assert float((p[:, 0] - p[:, 1]).abs().flatten(1).max(1).values.min()) > 0   # each class its own pattern
    if scope == "stored":
        teacher, label, _ = decode(a[0][:, :, :1])
        key = (teacher * 10 + label).view(-1)
        flat = p.reshape(-1, 3, 8, 8)
        for k in key.unique():
            same = flat[key == k]
            assert torch.allclose(same, same[:1].expand_as(same), **close)


def test_cue_must_not_be_negative():
    with pytest.raises(DfmetaError, match="cue must be >= 0"):
        MemoryBank(cue=-0.1)
    with pytest.raises(DfmetaError, match="cue_scope must be class, task or stored"):
        MemoryBank(cue=0.1, cue_scope="pair")
    with pytest.raises(DfmetaError, match="cue_kind must be colour or pattern"):
        MemoryBank(cue=0.1, cue_kind="stripes")
    from dfmeta.config import make
    from dfmeta.meta.trainer import TrainConfig
    with pytest.raises(DfmetaError, match="replay_cue"):
        make(TrainConfig, {"zoo": "z", "replay_cue": -1.0})
    with pytest.raises(DfmetaError, match="replay_cue_scope"):
        make(TrainConfig, {"zoo": "z", "replay_cue_scope": "pair"})
    with pytest.raises(DfmetaError, match="replay_cue_kind"):
        make(TrainConfig, {"zoo": "z", "replay_cue_kind": "stripes"})
