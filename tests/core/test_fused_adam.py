"""FusedAdam/FusedAdamW are bitwise torch's fused Adam/AdamW, state dicts included."""

import copy
import io
import math
import pickle

import pytest
import torch

from fme.core.fused_adam import FusedAdam, FusedAdamW

PAIRS = [(FusedAdam, torch.optim.Adam), (FusedAdamW, torch.optim.AdamW)]
OPTIONS = {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}


def _parameters() -> list[torch.nn.Parameter]:
    """float32 and float64 parameters, the same values on every call."""
    generator = torch.Generator().manual_seed(0)
    shapes = [((5, 4), torch.float32), ((5,), torch.float32), ((3, 3), torch.float64)]
    shapes += [((7,), torch.float32), ((2, 2), torch.float64)]
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))
        for shape, dtype in shapes
    ]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    """Two groups, the second with its own lr and weight decay."""
    return [
        {"params": params[:3]},
        {"params": params[3:], "lr": 0.02, "weight_decay": 0.1},
    ]


def _set_gradients(params: list[torch.nn.Parameter], step: int) -> None:
    """Gradients of a smooth loss; the last parameter only on even steps."""
    for p in params:
        p.grad = None
    used = params if step % 2 == 0 else params[:-1]
    loss = sum(
        (torch.sin(3 * p) * (k + 1) + (p - 0.3 * k) ** 2).sum()
        for k, p in enumerate(used)
    )
    loss.backward()


def _assert_same_states(ours, theirs) -> None:
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == reference["param_groups"]
    assert mine["state"].keys() == reference["state"].keys()
    for index, state in reference["state"].items():
        assert mine["state"][index].keys() == state.keys()
        for name, value in state.items():
            got = mine["state"][index][name]
            assert got.dtype == value.dtype and got.device == value.device, name
            assert got.shape == value.shape, name
            assert torch.equal(got, value), (index, name)


def _assert_same_parameters(ours_params, their_params) -> None:
    for mine, reference in zip(ours_params, their_params, strict=True):
        assert mine.dtype == reference.dtype
        assert torch.equal(mine, reference)


def _lr_factor(step: int) -> float:
    return 1.0 / (1.0 + 0.5 * step)


def _run(optimizers_and_params, *, steps: int, start: int = 0, schedulers=()):
    for step in range(start, start + steps):
        for optimizer, params in optimizers_and_params:
            _set_gradients(params, step)
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize(("ours_class", "torch_class"), PAIRS)
def test_updates_and_state_are_bitwise_torchs_fused(
    ours_class, torch_class, amsgrad, maximize
):
    ours_params, their_params = _parameters(), _parameters()
    options = {**OPTIONS, "amsgrad": amsgrad, "maximize": maximize}
    ours = ours_class(_groups(ours_params), lr=0.05, **options)
    theirs = torch_class(_groups(their_params), lr=0.05, fused=True, **options)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(o, _lr_factor) for o in (ours, theirs)
    ]
    before = [p.detach().clone() for p in ours_params]
    for step in range(5):
        _run(
            [(ours, ours_params), (theirs, their_params)],
            steps=1,
            start=step,
            schedulers=schedulers,
        )
        _assert_same_parameters(ours_params, their_params)
        _assert_same_states(ours, theirs)
    # the parameters moved, the lr changed, and the state is the fused path's
    assert all(not torch.equal(a, b) for a, b in zip(before, ours_params, strict=True))
    assert ours.param_groups[1]["lr"] == pytest.approx(0.02 * _lr_factor(5))
    state = ours.state[ours_params[0]]
    assert state["step"].dtype == torch.float32 and state["step"].dim() == 0
    assert float(state["step"]) == 5.0
    assert float(ours.state[ours_params[-1]]["step"]) == 3.0  # skipped odd steps
    assert ("max_exp_avg_sq" in state) == amsgrad
    assert ours.state[ours_params[2]]["exp_avg"].dtype == torch.float64


@pytest.mark.parametrize(("ours_class", "torch_class"), PAIRS)
def test_group_options_are_torchs(ours_class, torch_class):
    params = _parameters()
    ours = ours_class(params)
    theirs = torch_class(params, fused=True)
    assert ours.defaults == theirs.defaults
    assert ours.state_dict() == theirs.state_dict()
    for key, value in ours.param_groups[0].items():
        assert value == theirs.param_groups[0][key], key
    assert ours.param_groups[0].keys() == theirs.param_groups[0].keys()


def _saved(optimizer) -> dict:
    """A state dict after torch.save and a weights-only torch.load."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize(("ours_class", "torch_class"), PAIRS)
def test_our_state_dict_loads_into_torch_and_continues_identically(
    ours_class, torch_class
):
    ours_params = _parameters()
    ours = ours_class(_groups(ours_params), lr=0.05, amsgrad=True, **OPTIONS)
    _run([(ours, ours_params)], steps=3)
    their_params = [p.detach().clone().requires_grad_() for p in ours_params]
    theirs = torch_class(_groups(their_params), lr=0.05, amsgrad=True, **OPTIONS)
    theirs.load_state_dict(_saved(ours))
    assert theirs.param_groups[0]["fused"] is True
    _assert_same_states(ours, theirs)
    _run([(ours, ours_params), (theirs, their_params)], steps=3, start=3)
    _assert_same_parameters(ours_params, their_params)
    _assert_same_states(ours, theirs)


@pytest.mark.parametrize("step_form", ["tensor", "float64", "float"])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize(("ours_class", "torch_class"), PAIRS)
def test_torchs_state_dict_loads_and_continues_as_torchs_fused(
    ours_class, torch_class, fused, step_form
):
    """Fused or not (step on the CPU, float64, or a number in old checkpoints)."""
    source_params = _parameters()
    source = torch_class(_groups(source_params), lr=0.05, fused=fused, **OPTIONS)
    _run([(source, source_params)], steps=3)
    saved = _saved(source)
    for state in saved["state"].values():
        if step_form == "float":
            state["step"] = float(state["step"])
        elif step_form == "float64":  # torch's non-fused Adam, float64 default
            state["step"] = state["step"].to(torch.float64)
    ours_params = [p.detach().clone().requires_grad_() for p in source_params]
    their_params = [p.detach().clone().requires_grad_() for p in source_params]
    ours = ours_class(_groups(ours_params), lr=0.05, **OPTIONS)
    ours.load_state_dict(copy.deepcopy(saved))
    # the reference: torch's fused optimiser continuing from the same state
    reference_state = copy.deepcopy(saved)
    for group in reference_state["param_groups"]:
        group["fused"] = True
    theirs = torch_class(_groups(their_params), lr=0.05, fused=True, **OPTIONS)
    theirs.load_state_dict(reference_state)
    for param in ours_params:
        step = ours.state[param]["step"]
        assert step.dtype == torch.float32 and step.device == param.device
        assert float(step) in (2.0, 3.0)
    _assert_same_states(ours, theirs)
    _run([(ours, ours_params), (theirs, their_params)], steps=3, start=3)
    _assert_same_parameters(ours_params, their_params)
    _assert_same_states(ours, theirs)


def test_adamw_keeps_decoupled_weight_decay_when_loading_adam_state():
    params = _parameters()
    adam = FusedAdam(params)
    _run([(adam, params)], steps=1)
    adamw = FusedAdamW(params)
    adamw.load_state_dict(adam.state_dict())
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True
    assert adam.param_groups[0]["decoupled_weight_decay"] is False


def test_mismatched_state_dicts_are_refused():
    params = _parameters()
    two_groups = FusedAdam(_groups(params))
    _run([(two_groups, params)], steps=1)
    one_group = FusedAdam(params)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        one_group.load_state_dict(two_groups.state_dict())
    resized = FusedAdam([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(ValueError, match="doesn't match the size"):
        resized.load_state_dict(two_groups.state_dict())
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    _run([(sgd, params)], steps=1)
    with pytest.raises(ValueError, match="lacks Adam's options"):
        one_group.load_state_dict(sgd.state_dict())
    stepped = FusedAdam(params)
    _run([(stepped, params)], steps=1)
    saved = stepped.state_dict()
    saved["param_groups"][0]["amsgrad"] = True  # but no max_exp_avg_sq saved
    with pytest.raises(ValueError, match="lacks \\['max_exp_avg_sq'\\]"):
        one_group.load_state_dict(saved)


def test_sparse_gradients_are_refused():
    param = torch.nn.Parameter(torch.ones(3, 2))
    optimizer = FusedAdam([param])
    param.grad = torch.ones(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"lr": -1.0}, ValueError, "learning rate"),
        ({"eps": -1.0}, ValueError, "epsilon"),
        ({"betas": (0.9, 1.0)}, ValueError, "index 1"),
        ({"betas": (0.9, 1)}, ValueError, "two floats"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"lr": torch.tensor(0.1)}, TypeError, "tensor"),
    ],
)
def test_invalid_options_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        FusedAdam(_parameters(), **kwargs)


def test_unsupported_parameters_and_implementation_options_are_refused():
    with pytest.raises(ValueError, match="floating-point"):
        FusedAdam([torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="fused must be True"):
        FusedAdam([{"params": _parameters(), "fused": False}])
    with pytest.raises(ValueError, match="more than one parameter group"):
        params = _parameters()
        FusedAdam([{"params": params[:2]}, {"params": params[1:]}])


def test_zero_grad_drops_or_zeroes_the_gradients():
    params = _parameters()
    optimizer = FusedAdam(params)
    _set_gradients(params, 0)
    optimizer.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


def test_schedulers_hooks_closure_and_pickling_work():
    params = _parameters()
    optimizer = FusedAdam(params, lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0)
    calls = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(1))

    def closure():
        _set_gradients(params, 0)
        return torch.tensor(2.0)

    assert float(optimizer.step(closure)) == 2.0
    plateau.step(1.0)
    plateau.step(2.0)
    assert calls == [1]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    copied = pickle.loads(pickle.dumps(optimizer))
    assert copied.param_groups[0]["lr"] == pytest.approx(0.01)
    assert "FusedAdam (" in repr(optimizer) and "fused: True" in repr(optimizer)
    assert math.isclose(float(optimizer.state[params[0]]["step"]), 1.0)


def _permuted_view_parameter(seed: int) -> torch.nn.Parameter:
    # ACE's shape (in, out, l, m, 2) over mode-major memory, as the SFNO's
    # spectral weights are stored
    generator = torch.Generator().manual_seed(seed)
    memory = torch.randn(5, 4, 3, 2, 2, generator=generator)
    return torch.nn.Parameter(memory.permute(2, 3, 1, 0, 4))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize(("ours_class", "torch_class"), PAIRS)
def test_permuted_view_parameters_step_in_place_without_copies(
    ours_class, torch_class, amsgrad
):
    # the kernel gets contiguous views of the parameter's memory: the numbers
    # are torch's, the strides stay the parameter's and nothing is copied
    ours_param, their_param = _permuted_view_parameter(0), _permuted_view_parameter(0)
    assert not ours_param.is_contiguous()
    strides = ours_param.stride()
    ours = ours_class([ours_param], lr=0.05, amsgrad=amsgrad, weight_decay=0.1)
    theirs = torch_class(
        [their_param], lr=0.05, amsgrad=amsgrad, weight_decay=0.1, fused=True
    )
    for step in range(3):
        for param in (ours_param, their_param):
            generator = torch.Generator().manual_seed(step)
            memory = torch.randn(5, 4, 3, 2, 2, generator=generator)
            param.grad = memory.permute(2, 3, 1, 0, 4)
        with torch.profiler.profile(record_shapes=True) as profile:
            ours.step()
        theirs.step()
        # (the step counter's increment copies a 0-dim scalar, as in torch)
        copies = [
            e.input_shapes
            for e in profile.events()
            if e.name == "aten::copy_" and e.input_shapes[0]
        ]
        assert copies == []
        assert torch.equal(ours_param, their_param)
        assert ours_param.stride() == strides
    _assert_same_states(ours, theirs)
    assert ours.state[ours_param]["exp_avg"].stride() == strides


def test_loaded_moments_take_the_parameters_layout():
    # a state dict written over contiguous weights (torch's Adam on ACE's
    # layout) loads with the parameter's strides and steps as torch's
    contiguous = torch.nn.Parameter(_permuted_view_parameter(1).detach().contiguous())
    source = torch.optim.Adam([contiguous], lr=0.05, fused=True)
    contiguous.grad = torch.ones_like(contiguous)
    source.step()
    param = _permuted_view_parameter(1)
    ours = FusedAdam([param], lr=0.05)
    ours.load_state_dict(copy.deepcopy(source.state_dict()))  # as from a file
    assert ours.state[param]["exp_avg"].stride() == param.stride()
    assert torch.equal(
        ours.state[param]["exp_avg_sq"], source.state[contiguous]["exp_avg_sq"]
    )
    with torch.no_grad():
        param.copy_(contiguous)
    for p in (param, contiguous):
        p.grad = torch.full_like(p, 0.5)
    ours.step()
    source.step()
    assert torch.equal(param, contiguous)
