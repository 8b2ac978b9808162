import pytest
import torch

from fme.ace.models.conv_net import ConvNet, ConvNetConfig


def build(img_shape=(8, 16), n_in=3, n_out=2, **overrides) -> ConvNet:
    module = ConvNetConfig(**overrides).build(
        n_in_channels=n_in, n_out_channels=n_out, img_shape=img_shape
    )
    assert isinstance(module, ConvNet)
    return module


@pytest.mark.parametrize("img_shape", [(8, 16), (16, 32), (5, 7)])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"num_layers": 1}, {"num_layers": 3, "kernel_size": 5}, {"kernel_size": 1}],
)
def test_output_shape(img_shape, overrides):
    module = build(img_shape, n_in=3, n_out=4, **overrides)
    assert module(torch.randn(3, 3, *img_shape)).shape == (3, 4, *img_shape)


def test_parameter_count():
    module = build(n_in=3, n_out=2, hidden_channels=4, num_layers=2, kernel_size=3)
    expected = (3 * 4 * 9 + 4) + (4 * 2 * 9 + 2)
    assert sum(p.numel() for p in module.parameters()) == expected


def test_longitude_is_periodic():
    torch.manual_seed(0)
    module = build(num_layers=3)
    x = torch.randn(2, 3, 8, 16)
    torch.testing.assert_close(
        module(torch.roll(x, 5, dims=-1)), torch.roll(module(x), 5, dims=-1)
    )


def test_latitude_edges_replicate():
    # with replicated edges a constant field stays constant up to the poles;
    # zero padding would change the first and last rows
    module = build(num_layers=2, kernel_size=5)
    out = module(torch.full((1, 3, 8, 16), 2.0))
    torch.testing.assert_close(out, out[:, :, :1, :1].expand_as(out))


def test_gradients_reach_every_parameter():
    module = build(num_layers=3, noise_channels=1)
    module(torch.randn(2, 3, 8, 16)).square().mean().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_noise_channels_make_the_output_random():
    module = build(noise_channels=1)
    x = torch.randn(2, 3, 8, 16)
    assert (module(x) - module(x)).abs().max() > 1e-3


def test_without_noise_the_output_is_deterministic():
    module = build()
    x = torch.randn(2, 3, 8, 16)
    assert torch.equal(module(x), module(x))


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_channels", 0),
        ("num_layers", 0),
        ("kernel_size", 4),
        ("kernel_size", 0),
        ("noise_channels", -1),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ConvNetConfig(**{field: value})
