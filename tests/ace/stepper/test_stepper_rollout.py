import pytest
import torch
from stepper_builders import N_LAT, N_LON, batch, build_stepper


def test_rollout_shapes_and_forcing_each_step():
    stepper = build_stepper()
    data = batch(n_samples=3, n_times=4).data
    outputs = list(
        stepper.rollout(
            initial_condition={n: data[n][:, 0] for n in ["a", "b"]},
            forcing={"f": data["f"]},
            n_forward_steps=3,
            detach_uncorrected=True,
        )
    )
    assert len(outputs) == 3
    for out in outputs:
        assert sorted(out.output) == ["a", "b"]
        assert out.output["a"].shape == (3, N_LAT, N_LON)
        assert out.uncorrected == {}
    # the second step reads the first step's output, not the data
    manual = stepper.step.step(
        {
            "a": outputs[0].output["a"],
            "b": outputs[0].output["b"],
            "f": data["f"][:, 1],
        },
        {"f": data["f"][:, 2]},
        detach_uncorrected=True,
    )
    torch.testing.assert_close(manual.output["a"], outputs[1].output["a"])


def test_corrector_keeps_uncorrected_for_changed_variables_only():
    stepper = build_stepper(corrector={"conserve_global_mean_names": ["a"]})
    assert stepper.step.corrector_enabled
    data = batch().data
    out = stepper.step.step(
        {n: data[n][:, 0] for n in ["a", "b", "f"]},
        {"f": data["f"][:, 1]},
        detach_uncorrected=False,
    )
    assert list(out.uncorrected) == ["a"]
    ops = stepper.dataset_info.gridded_operations
    torch.testing.assert_close(
        ops.area_weighted_mean(out.output["a"]), ops.area_weighted_mean(data["a"][:, 0])
    )
    assert out.uncorrected["a"].requires_grad
    detached = stepper.step.step(
        {n: data[n][:, 0] for n in ["a", "b", "f"]},
        {"f": data["f"][:, 1]},
        detach_uncorrected=True,
    )
    assert not detached.uncorrected["a"].requires_grad
    assert detached.output["a"].requires_grad


def test_residual_prediction_adds_normalized_input():
    stepper = build_stepper(residual_prediction=True)
    plain = build_stepper(residual_prediction=False)
    data = batch().data
    inputs = {n: data[n][:, 0] for n in ["a", "b", "f"]}
    with torch.no_grad():
        res = stepper.step.step(inputs, {}, detach_uncorrected=True).output["a"]
        direct = plain.step.step(inputs, {}, detach_uncorrected=True).output["a"]
    # both share weights (same seed); residual adds (x - mean) back, in physical units
    torch.testing.assert_close(res, direct + (inputs["a"] - 1.0), rtol=1e-5, atol=1e-5)


def test_missing_input_variable_is_named():
    stepper = build_stepper()
    data = batch().data
    with pytest.raises(ValueError, match=r"lacks variables \['f'\]"):
        stepper.step.step(
            {"a": data["a"][:, 0], "b": data["b"][:, 0]}, {}, detach_uncorrected=True
        )
