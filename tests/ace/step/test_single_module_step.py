"""The stepper's network and corrector are reached through its own properties."""

import torch
from stepper_builders import MEANS, STDS, batch, build_stepper


class Doubled(torch.nn.Module):
    """A wrapper that doubles the network's normalised output."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


def test_wrap_module_replaces_the_network_of_every_step():
    stepper = build_stepper()
    network = stepper.module
    data = batch(n_times=2)
    inputs = {n: data.data[n][:, 0] for n in ["a", "b", "f"]}
    forcing = {"f": data.data["f"][:, 1]}
    plain = stepper.step.step(inputs, forcing, detach_uncorrected=True).output
    stepper.wrap_module(Doubled)
    assert isinstance(stepper.module, Doubled) and stepper.module.inner is network
    assert stepper.base_module is stepper.module  # only DDP is unwrapped
    doubled = stepper.step.step(inputs, forcing, detach_uncorrected=True).output
    for name in ["a", "b"]:
        normalized = (plain[name] - MEANS[name]) / STDS[name]
        expected = 2 * normalized * STDS[name] + MEANS[name]
        torch.testing.assert_close(doubled[name], expected, rtol=1e-5, atol=1e-5)


def test_corrector_property():
    assert build_stepper().corrector is None
    corrected = build_stepper(corrector={"conserve_global_mean_names": ["a"]})
    assert corrected.corrector is not None
    assert list(corrected.corrector.conserved_names) == ["a"]
