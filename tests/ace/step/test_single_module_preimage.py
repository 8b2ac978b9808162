"""The single-module step exposes its corrector's local inverse."""

import torch
from stepper_builders import batch, build_stepper


def _step_inputs():
    data = batch(n_times=2)
    inputs = {n: data.data[n][:, 0] for n in ["a", "b", "f"]}
    return inputs, {"f": data.data["f"][:, 1]}, data


def test_no_corrector_no_preimage():
    inputs, forcing, _ = _step_inputs()
    out = build_stepper().step.step(inputs, forcing, detach_uncorrected=True)
    assert out.nearest_preimage is None


def test_preimage_is_bound_to_raw_output_and_detached():
    stepper = build_stepper(
        corrector={"conserve_global_mean_names": ["a"], "force_positive_names": ["b"]}
    )
    inputs, forcing, data = _step_inputs()
    out = stepper.step.step(inputs, forcing, detach_uncorrected=False)
    assert out.nearest_preimage is not None
    target = {n: data.data[n][:, 1] for n in ["a", "b"]}
    preimage = out.nearest_preimage(target)
    assert set(preimage) == {"a", "b"}
    assert not any(v.requires_grad for v in preimage.values())
    raw = {k: v.detach() for k, v in out.uncorrected.items()}
    corrector = stepper.step.corrector
    expected = corrector.nearest_preimage(raw, target, inputs)
    for name in preimage:
        torch.testing.assert_close(preimage[name], expected[name])
    ops = stepper.dataset_info.gridded_operations
    shift = ops.area_weighted_mean(raw["a"] - target["a"], keepdim=True)
    torch.testing.assert_close(preimage["a"], target["a"] + shift)
    # the pre-image maps back onto the corrected target
    corrected_preimage = corrector(inputs, {**raw, **preimage}, forcing)
    corrected_target = corrector(inputs, target, forcing)
    for name in preimage:
        torch.testing.assert_close(corrected_preimage[name], corrected_target[name])
