"""dinolab.ema: the teacher update, checked against the formula on known tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from dinolab.ema import EMAUpdater, ema_update


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_ema_update_equals_formula_for_every_parameter():
    student, teacher = _net(), _net()  # different random weights
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = 0.9
    ema_update(teacher, student, m)
    s = student.state_dict()
    for name, p in teacher.named_parameters():
        want = m * before[name] + (1 - m) * s[name]
        # lerp vs the formula: float32 rounding only (a few ulps).
        torch.testing.assert_close(p, want, rtol=1e-6, atol=1e-7)


def test_ema_update_builds_no_graph_and_keeps_requires_grad():
    student, teacher = _net(), _net()
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss = student(torch.randn(5, 4)).sum()
    ema_update(teacher, student, 0.5)
    assert all(p.grad_fn is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    loss.backward()  # the student's graph is untouched by the update


def test_momentum_extremes():
    student, teacher = _net(), _net()
    t0 = copy.deepcopy(teacher.state_dict())
    ema_update(teacher, student, 1.0)
    for k, v in teacher.named_parameters():
        assert torch.equal(v, t0[k])
    ema_update(teacher, student, 0.0)
    for (k, v), (_, s) in zip(teacher.named_parameters(), student.named_parameters(), strict=True):
        assert torch.equal(v, s), k


def test_buffers_keep_copy_ema():
    student, teacher = _net(), _net()
    student.train()
    student(torch.randn(16, 4))  # moves the student's BatchNorm running statistics
    bn_t, bn_s = teacher[1], student[1]
    start = bn_t.running_mean.clone()
    ema_update(teacher, student, 0.5)  # official DINO: buffers are not averaged
    assert torch.equal(bn_t.running_mean, start)
    ema_update(teacher, student, 0.5, buffers="ema")
    torch.testing.assert_close(bn_t.running_mean, 0.5 * start + 0.5 * bn_s.running_mean)
    ema_update(teacher, student, 0.5, buffers="copy")
    assert torch.equal(bn_t.running_mean, bn_s.running_mean)
    assert bn_t.num_batches_tracked == bn_s.num_batches_tracked


def test_mismatched_architectures_are_refused_with_names():
    with pytest.raises(ValueError, match="shape"):
        ema_update(nn.Linear(4, 3), nn.Linear(4, 2), 0.9)
    with pytest.raises(ValueError, match="only in the student"):
        ema_update(nn.Linear(4, 3, bias=False), nn.Linear(4, 3), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)


def test_ddp_like_wrapper_is_unwrapped():
    student = _net()
    teacher = copy.deepcopy(student)
    ddp = nn.DataParallel(student)  # same .module convention as DDP, available on CPU
    ema_update(teacher, ddp, 0.5)  # names would differ by "module." if not unwrapped


def test_ema_updater_follows_the_cosine_and_counts_steps():
    total = 8
    ema = EMAUpdater(total_steps=total, base_momentum=0.99)
    student, teacher = _net(), _net()
    used = [ema.step(teacher, student) for _ in range(total + 2)]
    want = [1 - (1 - 0.99) * (math.cos(math.pi * i / total) + 1) / 2 for i in range(total)]
    assert used[:total] == pytest.approx(want, abs=1e-12)
    assert used[total:] == [1.0, 1.0]  # past the end: the final momentum
    assert ema.step_count == total + 2
    restored = EMAUpdater(total_steps=total, base_momentum=0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.step_count == ema.step_count
    with pytest.raises(ValueError, match="base_momentum"):
        EMAUpdater(total_steps=total).load_state_dict(ema.state_dict())


# --------------------------------------------------------------- the flat-buffer fast path


def _vit_pair() -> tuple[nn.Module, nn.Module]:
    """A small ViT student and a teacher that differs from it (like one after some steps)."""
    from dinolab.models import vit_course

    torch.manual_seed(0)
    student = vit_course()
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return teacher, student


def _official_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """Official DINO's per-parameter loop."""
    with torch.no_grad():
        for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
            pt.mul_(m).add_((1 - m) * ps.detach())


def test_flat_update_is_one_buffer_and_equals_the_per_parameter_formula():
    from dinolab.flat_params import flat_view

    teacher, student = _vit_pair()
    by_tensor, formula = copy.deepcopy(teacher), copy.deepcopy(teacher)
    ids = [id(p) for p in teacher.parameters()]
    for m in (0.996, 0.9, 0.5):
        ema_update(teacher, student, m)  # flattens both models at the first call
        ema_update(by_tensor, student, m, flatten=False)  # _foreach_lerp_, tensor by tensor
        _official_update(formula, student, m)
    assert flat_view(list(teacher.parameters())) is not None
    assert flat_view(list(student.parameters())) is not None
    assert flat_view(list(by_tensor.parameters())) is None  # flatten=False left it alone
    assert [id(p) for p in teacher.parameters()] == ids  # the same Parameter objects
    for (name, a), (_, b), (_, c) in zip(teacher.named_parameters(), by_tensor.named_parameters(),
                                         formula.named_parameters(), strict=True):
        # One lerp_ over the buffer and _foreach_lerp_ run the same element-wise formula.
        assert torch.equal(a, b), name
        # lerp vs m*t + (1-m)*s: float32 rounding of three updates (a few ulps).
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7, msg=name)


def test_flattening_keeps_state_dict_keys_values_and_requires_grad():
    teacher, student = _vit_pair()
    before = {part: {k: v.clone() for k, v in model.state_dict().items()}
              for part, model in (("teacher", teacher), ("student", student))}
    grad_flags = [p.requires_grad for p in student.parameters()]
    ema_update(teacher, student, 1.0)  # momentum 1: flattens, values unchanged
    for part, model in (("teacher", teacher), ("student", student)):
        after = model.state_dict()
        assert list(after) == list(before[part])
        for key, value in after.items():
            assert value.shape == before[part][key].shape, key
            assert torch.equal(value, before[part][key]), key
    assert [p.requires_grad for p in student.parameters()] == grad_flags
    assert all(not p.requires_grad for p in teacher.parameters())


def test_optimizer_built_before_flattening_trains_the_same_weights():
    # Engine order: the optimiser holds the parameters before the first EMA update flattens
    # them. The run must equal one where nothing is ever flattened, bit for bit.
    from dinolab.flat_params import flat_view

    runs = []
    for flatten in (True, False):
        teacher, student = _vit_pair()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x = torch.randn(4, 3, 32, 32, generator=g)
            loss = (student(x) - teacher(x)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(teacher, student, 0.9, flatten=flatten)
        assert (flat_view(list(student.parameters())) is not None) == flatten
        runs.append((student.state_dict(), teacher.state_dict(), opt.state_dict()["state"]))
    (s1, t1, o1), (s2, t2, o2) = runs
    for key in s1:
        assert torch.equal(s1[key], s2[key]), f"student {key}"
        assert torch.equal(t1[key], t2[key]), f"teacher {key}"
    for index, state in o1.items():
        for name, value in state.items():
            assert torch.equal(value, o2[index][name]), (index, name)


def test_checkpoint_round_trip_between_flat_and_plain_models(tmp_path):
    from dinolab.flat_params import flat_view

    teacher, student = _vit_pair()
    ema_update(teacher, student, 0.9)  # both flat now
    path = tmp_path / "ckpt.pth"
    torch.save({"teacher": teacher.state_dict(), "student": student.state_dict()}, path)
    plain_size = tmp_path / "plain.pth"
    fresh_t, fresh_s = _vit_pair()  # never flattened
    torch.save({"teacher": fresh_t.state_dict(), "student": fresh_s.state_dict()}, plain_size)
    # The shared buffer is written once: the file holds the same bytes as a plain one.
    assert abs(path.stat().st_size - plain_size.stat().st_size) < 0.01 * plain_size.stat().st_size
    loaded = torch.load(path, weights_only=True)
    fresh_t.load_state_dict(loaded["teacher"])  # a plain model takes a flat model's file
    for key, value in teacher.state_dict().items():
        assert torch.equal(fresh_t.state_dict()[key], value), key
    # ...and a flat model takes a plain model's file, staying flat (load copies in place).
    ema_update(fresh_t, fresh_s, 1.0)
    fresh_t.load_state_dict(_vit_pair()[0].state_dict())
    assert flat_view(list(fresh_t.parameters())) is not None
    for key, value in _vit_pair()[0].state_dict().items():
        assert torch.equal(fresh_t.state_dict()[key], value), key


def test_moving_a_flat_model_falls_back_and_flattens_again():
    from dinolab.flat_params import flat_view

    teacher, student = _vit_pair()
    ema_update(teacher, student, 0.9)
    teacher.double(), student.double()  # a dtype change gives every parameter its own tensor
    assert flat_view(list(teacher.parameters())) is None
    want = copy.deepcopy(teacher)
    ema_update(want, student, 0.5, flatten=False)
    ema_update(teacher, student, 0.5)
    assert flat_view(list(teacher.parameters())) is not None
    for (name, a), (_, b) in zip(teacher.named_parameters(), want.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_mixed_dtypes_are_updated_tensor_by_tensor():
    from dinolab.flat_params import flat_view, flatten_parameters

    student = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2).double())
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    want = copy.deepcopy(teacher)
    _official_update(want, student, 0.75)
    assert flatten_parameters(teacher) is None  # two dtypes: left as they are
    ema_update(teacher, student, 0.75)
    assert flat_view(list(teacher.parameters())) is None
    for (name, a), (_, b) in zip(teacher.named_parameters(), want.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)



def test_a_replaced_parameter_module_or_student_is_seen_at_the_next_update():
    # ema_update remembers a flat pair between calls; any change to either tree must show.
    student, teacher = _net(), _net()
    ema_update(teacher, student, 0.5)  # flat and remembered now
    teacher[0].weight = nn.Parameter(torch.zeros(8, 4))  # a new parameter object
    teacher[3] = nn.Linear(8, 3)  # a new module
    want = {k: 0.5 * v + 0.5 * student.state_dict()[k]
            for k, v in teacher.state_dict().items() if k.split(".")[0] in ("0", "3")}
    ema_update(teacher, student, 0.5)
    got = teacher.state_dict()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7, msg=key)
    other = _net()  # another student for the same teacher
    ema_update(teacher, other, 0.0)
    for (k, a), (_, b) in zip(teacher.named_parameters(), other.named_parameters(), strict=True):
        assert torch.equal(a, b), k
    teacher[0].weight = nn.Parameter(torch.zeros(8, 5))
    with pytest.raises(ValueError, match="shape"):
        ema_update(teacher, other, 0.5)


def test_a_remembered_pair_is_reused_until_a_module_or_a_layout_changes():
    from dinolab.ema import _FLAT_PAIRS

    teacher, student = _vit_pair()
    ema_update(teacher, student, 0.9)
    pair = _FLAT_PAIRS[teacher]
    ema_update(teacher, student, 0.9)
    assert _FLAT_PAIRS[teacher] is pair  # the fast path: no pairing by name
    teacher.load_state_dict(student.state_dict())  # copies in place: still the same layout
    assert pair.holds(student)
    student.head = nn.Identity()  # any registration anywhere invalidates the memory
    assert not pair.holds(student)
    teacher, student = _vit_pair()
    ema_update(teacher, student, 0.9)
    pair = _FLAT_PAIRS[teacher]
    teacher.double()  # new memory for every parameter
    assert not pair.holds(student)
