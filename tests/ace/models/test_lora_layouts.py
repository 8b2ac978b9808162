"""LoRA on fme's SFNO: spectral weights and pointwise layers, merged exactly."""

import pytest
import torch

from fme.ace.models.lora_layouts import LORA_LAYOUTS
from fme.ace.models.registry import ModuleSelector
from fme.core.lora import (
    LoRAConfig,
    apply_lora,
    has_lora,
    merge_lora,
    plain_state_dict,
)

X = torch.randn(2, 3, 8, 16, generator=torch.Generator().manual_seed(4))


def _sfno(operator_type: str = "dhconv", seed: int = 0):
    torch.manual_seed(seed)
    return ModuleSelector(
        type="SphericalFourierNeuralOperatorNet",
        config={"embed_dim": 8, "num_layers": 2, "operator_type": operator_type},
    ).build(n_in_channels=3, n_out_channels=2, img_shape=(8, 16))


def _randomize_adapters(net, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def test_spectral_update_is_complex_low_rank_per_degree():
    net = _sfno()
    conv = net.blocks[0].filter.filter
    # ACE's (in, out, lmax) as [lmax, in, out]
    base = torch.view_as_complex(conv.weight.detach().permute(2, 0, 1, 3).contiguous())
    apply_lora(
        net,
        LoRAConfig(rank=2, alpha=1.0, target_modules=["blocks.*.filter.filter"]),
        layouts=LORA_LAYOUTS,
    )
    _randomize_adapters(net)
    update = conv.parametrizations.weight[0]
    a = torch.view_as_complex(update.lora_A)  # [lmax, in, rank]
    b = torch.view_as_complex(update.lora_B)  # [lmax, rank, out]
    adapted = torch.view_as_complex(conv.weight.permute(2, 0, 1, 3).contiguous())
    for degree in range(base.shape[0]):
        expected = base[degree] + 0.5 * a[degree] @ b[degree]
        torch.testing.assert_close(adapted[degree], expected)
        assert torch.linalg.matrix_rank(adapted[degree] - base[degree]) == 2


@pytest.mark.parametrize("operator_type", ["dhconv", "diagonal"])
def test_merged_sfno_equals_adapted_sfno(operator_type):
    net = _sfno(operator_type)
    reference = net(X)
    adapted = apply_lora(
        net,
        LoRAConfig(
            rank=2,
            target_modules=[
                "blocks.*.filter.filter",
                "blocks.*.inner_skip",
                "decoder.*",
            ],
        ),
        layouts=LORA_LAYOUTS,
    )
    assert adapted == [
        "blocks.0.filter.filter",
        "blocks.0.inner_skip",
        "blocks.1.filter.filter",
        "blocks.1.inner_skip",
        "decoder.0",
        "decoder.2",
    ]
    torch.testing.assert_close(net(X), reference, rtol=0, atol=0)
    _randomize_adapters(net)
    out_adapted = net(X)
    assert (out_adapted - reference).abs().max() > 1e-3
    plain = plain_state_dict(net)
    inference_net = _sfno(operator_type, seed=1)  # no LoRA code involved
    inference_net.load_state_dict(plain)
    torch.testing.assert_close(inference_net(X), out_adapted, rtol=1e-5, atol=1e-5)
    merge_lora(net)
    assert not has_lora(net)
    torch.testing.assert_close(net(X), out_adapted, rtol=1e-5, atol=1e-5)
