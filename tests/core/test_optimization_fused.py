import pytest
import torch

from fme.core.fused_adam import FusedAdam, FusedAdamW
from fme.core.optimization import OptimizationConfig


def _trained_weights(config: OptimizationConfig, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3)
    )
    optimization = config.build(model.parameters())
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    for _ in range(steps):
        optimization.accumulate_loss(((model(x) - y) ** 2).mean())
        optimization.step_weights()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("optimizer_type", ["Adam", "AdamW"])
def test_adam_is_fused_by_default_and_gives_the_loop_update(optimizer_type):
    fused = OptimizationConfig(optimizer_type=optimizer_type, lr=1e-2)
    built = fused.build(torch.nn.Linear(2, 2).parameters())
    assert built.optimizer.defaults["fused"] is True
    loop = OptimizationConfig(
        optimizer_type=optimizer_type,
        lr=1e-2,
        kwargs={"fused": False, "foreach": False, "weight_decay": 0.01},
    )
    fused_wd = OptimizationConfig(
        optimizer_type=optimizer_type, lr=1e-2, kwargs={"weight_decay": 0.01}
    )
    torch.testing.assert_close(
        _trained_weights(fused_wd), _trained_weights(loop), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kwargs", [{"fused": False}, {"foreach": True}])
def test_the_users_choice_of_implementation_is_kept(kwargs):
    config = OptimizationConfig(optimizer_type="Adam", kwargs=kwargs)
    built = config.build(torch.nn.Linear(2, 2).parameters())
    assert not built.optimizer.defaults.get("fused")


def test_sgd_is_not_fused():
    config = OptimizationConfig(optimizer_type="SGD", lr=0.1)
    built = config.build(torch.nn.Linear(2, 2).parameters())
    assert not built.optimizer.defaults.get("fused")


@pytest.mark.parametrize(
    ("optimizer_type", "lean_class"), [("Adam", FusedAdam), ("AdamW", FusedAdamW)]
)
def test_the_default_fused_path_is_built_without_torch_optim_machinery(
    optimizer_type, lean_class
):
    config = OptimizationConfig(
        optimizer_type=optimizer_type,
        lr=1e-2,
        kwargs={"betas": [0.9, 0.95], "amsgrad": True, "eps": 1e-6},
    )
    built = config.build(torch.nn.Linear(2, 2).parameters())
    assert type(built.optimizer) is lean_class
    group = built.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["amsgrad"] is True
    assert group["eps"] == 1e-6 and group["lr"] == 1e-2


@pytest.mark.parametrize(
    ("optimizer_type", "kwargs", "torch_class", "fused"),
    [
        ("Adam", {"capturable": False}, torch.optim.Adam, True),
        ("AdamW", {"fused": True}, torch.optim.AdamW, True),
        ("Adam", {"foreach": False}, torch.optim.Adam, None),
    ],
)
def test_other_kwargs_build_torchs_class(optimizer_type, kwargs, torch_class, fused):
    config = OptimizationConfig(optimizer_type=optimizer_type, kwargs=kwargs)
    built = config.build(torch.nn.Linear(2, 2).parameters())
    assert type(built.optimizer) is torch_class
    assert built.optimizer.defaults["fused"] is fused


def test_complex_parameters_build_torchs_loop_adam():
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.complex64))
    built = OptimizationConfig(optimizer_type="Adam").build([param])
    assert type(built.optimizer) is torch.optim.Adam
    assert not built.optimizer.defaults["fused"]


@pytest.mark.parametrize(
    ("optimizer_type", "kwargs"),
    [
        ("Adam", {"nonsense": 1}),
        ("AdamW", {"nonsense": 1}),
        ("AdamW", {"decoupled_weight_decay": True}),
    ],
)
def test_unknown_kwargs_are_refused_naming_them(optimizer_type, kwargs):
    config = OptimizationConfig(optimizer_type=optimizer_type, kwargs=kwargs)
    (key,) = kwargs
    with pytest.raises(
        ValueError, match=f"not accepted by {optimizer_type}: .*argument '{key}'"
    ):
        config.build(torch.nn.Linear(2, 2).parameters())
