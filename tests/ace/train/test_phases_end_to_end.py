"""Multi-phase runs, fine-tuning, freezing and LoRA end to end on tiny data."""

import pytest
import torch
from train_run_builders import tiny_config, tiny_data

from fme.ace.data.loader import build_data_loader
from fme.ace.stepper.stepper import Stepper
from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint

CONV_NET = (
    "stepper.step.config.builder="
    "{type: ConvNet, config: {hidden_channels: 4, num_layers: 2}}"
)
ADAM_THEN_LBFGS = [
    CONV_NET,
    "stepper_training.n_forward_steps=1",
    "phases=[{name: adam, max_epochs: 2, optimization: {optimizer_type: Adam, "
    "lr: 0.003}}, {name: lbfgs, max_steps: 6, optimization: {optimizer_type: LBFGS,"
    " lr: 1.0, kwargs: {max_iter: 4, history_size: 10}}}]",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("shallow_water"))


@pytest.fixture(scope="module")
def two_phase_run(data, tmp_path_factory):
    experiment_dir = tmp_path_factory.mktemp("two_phase")
    config = tiny_config(data, experiment_dir, ADAM_THEN_LBFGS)
    run_training(config)
    return config, experiment_dir / "training_checkpoints"


def _weights(path):
    return load_checkpoint(path)["trainable"]["stepper"]["module"]


def _train_set_loss(config, checkpoint_path) -> float:
    """Mean one-step loss over the whole training set (no shuffling)."""
    stepper = Stepper.from_state(
        load_checkpoint(checkpoint_path)["trainable"]["stepper"]
    )
    train = config.stepper_training.build(stepper)
    loader = build_data_loader(
        config.train_loader,
        names=stepper.all_names,
        n_timesteps=2,
        shuffle=False,
        drop_last=False,
    )
    total, count = 0.0, 0
    for batch in loader.loader:
        total += train.validate_on_batch(batch).metrics["loss"] * batch.batch_size
        count += batch.batch_size
    return total / count


def test_adam_then_lbfgs_lowers_the_training_loss_further(two_phase_run):
    config, checkpoints = two_phase_run
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "best_ckpt.tar",
        "ckpt.tar",
        "phase_0.tar",
        "phase_1.tar",
    ]
    after_adam = load_checkpoint(checkpoints / "phase_0.tar")
    steps_adam = after_adam["optimization"]["optimizer_steps"]
    assert after_adam["phase"] == {"index": 0, "start_step": 0, "start_epoch": 0}
    assert after_adam["trainer"]["epoch"] == 2
    final = load_checkpoint(checkpoints / "ckpt.tar")
    assert final["phase"] == {"index": 1, "start_step": steps_adam, "start_epoch": 2}
    # one global clock; the loss-weight schedules carried over; the LR schedule
    # restarted with the phase's optimiser
    assert final["optimization"]["optimizer_steps"] == steps_adam + 6
    assert final["trainable"]["loss_weights"]["t"] == steps_adam + 6
    assert final["optimization"]["schedule"]["t"] == 6
    assert "history_size" in str(final["optimization"]["optimizer"]["param_groups"])
    loss_adam = _train_set_loss(config, checkpoints / "phase_0.tar")
    loss_lbfgs = _train_set_loss(config, checkpoints / "phase_1.tar")
    assert loss_lbfgs < 0.8 * loss_adam


def test_resume_in_the_middle_of_phase_two_matches_the_uninterrupted_run(
    data, tmp_path, two_phase_run
):
    _, full_checkpoints = two_phase_run
    steps_adam = load_checkpoint(full_checkpoints / "phase_0.tar")["optimization"][
        "optimizer_steps"
    ]
    interrupted = tmp_path / "interrupted"
    run_training(
        tiny_config(
            data, interrupted, ADAM_THEN_LBFGS + [f"max_steps={steps_adam + 2}"]
        )
    )
    checkpoints = interrupted / "training_checkpoints"
    state = load_checkpoint(checkpoints / "ckpt.tar")
    assert state["phase"]["index"] == 1
    assert state["optimization"]["optimizer_steps"] == steps_adam + 2
    assert not (checkpoints / "phase_1.tar").exists()
    run_training(tiny_config(data, interrupted, ADAM_THEN_LBFGS))
    resumed = load_checkpoint(checkpoints / "ckpt.tar")
    assert resumed["optimization"]["optimizer_steps"] == steps_adam + 6
    expected = _weights(full_checkpoints / "ckpt.tar")
    for name, value in resumed["trainable"]["stepper"]["module"].items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)


def test_fine_tune_with_frozen_encoder_and_reinitialised_head(
    data, tmp_path, two_phase_run
):
    _, checkpoints = two_phase_run
    pretrained = _weights(checkpoints / "phase_1.tar")
    experiment_dir = tmp_path / "fine_tune"
    run_training(
        tiny_config(
            data,
            experiment_dir,
            [
                CONV_NET,
                "max_steps=3",
                "stepper_training.parameter_init={weights_path: "
                f"{checkpoints / 'phase_1.tar'}, exclude_parameters: [convs.1.*], "
                "frozen_parameters: {include: [convs.0.*]}}",
            ],
        )
    )
    state = load_checkpoint(experiment_dir / "training_checkpoints" / "ckpt.tar")
    tuned = state["trainable"]["stepper"]["module"]
    assert torch.equal(tuned["convs.0.weight"], pretrained["convs.0.weight"])
    assert torch.equal(tuned["convs.0.bias"], pretrained["convs.0.bias"])
    assert not torch.equal(tuned["convs.1.weight"], pretrained["convs.1.weight"])
    # the frozen parameters are not in the optimiser at all
    (group,) = state["optimization"]["optimizer"]["param_groups"]
    assert len(group["params"]) == 2
    # a resumed fine-tuning run does not reload the pre-trained weights
    run_training(
        tiny_config(
            data,
            experiment_dir,
            [
                CONV_NET,
                "max_steps=4",
                "stepper_training.parameter_init={weights_path: /does/not/exist.tar,"
                " frozen_parameters: {include: [convs.0.*]}}",
            ],
        )
    )
    again = load_checkpoint(experiment_dir / "training_checkpoints" / "ckpt.tar")
    assert again["optimization"]["optimizer_steps"] == 4


def test_lora_phase_merges_into_a_plain_checkpoint(data, tmp_path):
    experiment_dir = tmp_path / "lora"
    run_training(
        tiny_config(
            data,
            experiment_dir,
            [
                "stepper_training.n_forward_steps=1",
                "phases=[{max_steps: 2}, {max_steps: 3, optimization: {lr: 0.01},"
                " lora: {rank: 2, target_modules: [blocks.*.filter.filter, decoder.*]}}]",
            ],
        )
    )
    checkpoints = experiment_dir / "training_checkpoints"
    base = _weights(checkpoints / "phase_0.tar")
    latest = load_checkpoint(checkpoints / "ckpt.tar")
    end = load_checkpoint(checkpoints / "phase_1.tar")
    assert "lora" in latest["trainable"] and "lora" not in end["trainable"]
    adapters = latest["trainable"]["lora"]
    # frozen base weights kept their phase-0 values; the merged ones moved
    original = adapters["blocks.0.filter.filter.parametrizations.weight.original"]
    assert torch.equal(original, base["blocks.0.filter.filter.weight"])
    merged = end["trainable"]["stepper"]["module"]
    assert sorted(merged) == sorted(base)
    assert not torch.equal(
        merged["blocks.0.filter.filter.weight"], base["blocks.0.filter.filter.weight"]
    )
    assert torch.equal(
        merged["blocks.0.inner_skip.weight"], base["blocks.0.inner_skip.weight"]
    )
    torch.testing.assert_close(latest["trainable"]["stepper"]["module"], merged)
    # the merged checkpoint is an ordinary stepper
    stepper = Stepper.from_state(end["trainable"]["stepper"])
    assert not any("lora" in n for n, _ in stepper.base_module.named_parameters())
