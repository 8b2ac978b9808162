"""Low-rank adaptation (LoRA) of a network's weight matrices.

A targeted weight ``W`` is replaced (via ``torch.nn.utils.parametrize``) by
``W + (alpha / rank) * B A`` where ``A`` and ``B`` are small trainable
matrices of rank ``rank`` and ``W`` is frozen. ``B`` starts at zero, so the
adapted network starts equal to the base network. Merging (``merge_lora``)
removes the parametrisation and leaves the plain merged weight, so a merged
network — and every saved ``plain_state_dict`` — needs no LoRA code.

Two weight layouts are supported:

- ``out_in``: a real matrix ``[out, in]``, possibly followed by axes of size
  one (``nn.Linear``, a 1x1 ``nn.Conv2d``, fme's ``PointwiseLinear``):
  ``A: [rank, in]``, ``B: [out, rank]``.
- ``modes_in_out_complex``: a batch of complex ``[in, out]`` matrices stored as
  real pairs, ``[*modes, in, out, 2]`` (the spectral weights of an SFNO):
  one complex low-rank update per mode, ``A: [*modes, in, rank, 2]``,
  ``B: [*modes, rank, out, 2]``, ``delta = A @ B`` in complex arithmetic.
- ``in_out_modes_complex``: the same matrices in ACE's order,
  ``[in, out, *modes, 2]``; the adapters are as for ``modes_in_out_complex``
  and the update is permuted into the weight's order.

Which module types carry which layout is passed in (``layouts``), so this
module knows nothing about particular networks.
"""

import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from fme.core.wildcard import check_all_patterns_match, matches_any

OUT_IN = "out_in"
MODES_IN_OUT_COMPLEX = "modes_in_out_complex"
IN_OUT_MODES_COMPLEX = "in_out_modes_complex"
_LAYOUTS = (OUT_IN, MODES_IN_OUT_COMPLEX, IN_OUT_MODES_COMPLEX)
_FIELD = "lora"
_PARAMETRIZATIONS = "parametrizations."


@dataclasses.dataclass(frozen=True)
class AdaptableWeight:
    """Which parameter of a module type LoRA adapts, and its layout.

    Attributes:
        parameter: the parameter's attribute name, e.g. ``weight``.
        layout: ``out_in``, ``modes_in_out_complex`` or
            ``in_out_modes_complex`` (module docstring).
    """

    parameter: str
    layout: str

    def __post_init__(self):
        if self.layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {self.layout!r}")


DEFAULT_LAYOUTS: dict[type[nn.Module], AdaptableWeight] = {
    nn.Linear: AdaptableWeight("weight", OUT_IN),
    nn.Conv2d: AdaptableWeight("weight", OUT_IN),  # 1x1 kernels only
}


@dataclasses.dataclass
class LoRAConfig:
    """Low-rank adapters on selected layers; every other base weight is frozen.

    Attributes:
        rank: rank of each adapter (>= 1).
        target_modules: patterns of module names to adapt, e.g.
            ``["blocks.*.filter.filter", "blocks.*.inner_skip"]`` (see
            ``fme.core.wildcard``; ``*`` also matches dots). Matched modules
            that have no adaptable weight (containers, activations) are
            skipped; every pattern must select at least one adaptable layer.
            Adaptable: linear layers, 1x1 convolutions, pointwise linear maps
            and SFNO spectral convolutions.
        alpha: the update is scaled by ``alpha / rank``; default ``rank``
            (scale 1).
        trainable_parameters: patterns of base parameters that keep training
            alongside the adapters (e.g. ``["*.bias"]`` or a re-initialised
            ``decoder.*``); all other base parameters are frozen.
    """

    rank: int
    target_modules: list[str]
    alpha: float | None = None
    trainable_parameters: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"{_FIELD}.rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ValueError(
                f"{_FIELD}.target_modules must name at least one module pattern, "
                "e.g. ['blocks.*.filter.filter']"
            )
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"{_FIELD}.alpha must be positive, got {self.alpha}")

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return (self.alpha if self.alpha is not None else self.rank) / self.rank


class LowRankUpdate(nn.Module):
    """The parametrisation ``W -> W + scale * delta(A, B)`` of one weight.

    Args:
        weight: the base weight (shape, dtype and device are taken from it).
        layout: ``out_in``, ``modes_in_out_complex`` or ``in_out_modes_complex``.
        rank: the adapter rank.
        scale: ``alpha / rank``.
    """

    def __init__(self, weight: torch.Tensor, *, layout: str, rank: int, scale: float):
        super().__init__()
        self.layout = layout
        self.rank = rank
        self.scale = scale
        self.shape = tuple(weight.shape)
        dtype, device = weight.dtype, weight.device
        if layout == OUT_IN:
            if weight.dim() < 2 or any(s != 1 for s in weight.shape[2:]):
                raise ValueError(
                    f"an out_in weight must be [out, in, 1, ...], got {self.shape}"
                )
            n_out, n_in = weight.shape[0], weight.shape[1]
            a_shape, b_shape = [rank, n_in], [n_out, rank]
            a_std = 1.0 / math.sqrt(n_in)
        elif layout == MODES_IN_OUT_COMPLEX:
            if weight.dim() < 3 or weight.shape[-1] != 2:
                raise ValueError(
                    f"a modes_in_out_complex weight must be [*modes, in, out, 2], "
                    f"got {self.shape}"
                )
            *modes, n_in, n_out, _ = weight.shape
            a_shape = [*modes, n_in, rank, 2]
            b_shape = [*modes, rank, n_out, 2]
            a_std = 1.0 / math.sqrt(2 * n_in)
        elif layout == IN_OUT_MODES_COMPLEX:
            if weight.dim() < 3 or weight.shape[-1] != 2:
                raise ValueError(
                    f"an in_out_modes_complex weight must be [in, out, *modes, 2], "
                    f"got {self.shape}"
                )
            n_in, n_out, *modes, _ = weight.shape
            a_shape = [*modes, n_in, rank, 2]
            b_shape = [*modes, rank, n_out, 2]
            a_std = 1.0 / math.sqrt(2 * n_in)
        else:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        a = torch.randn(a_shape, dtype=dtype, device=device) * a_std
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(b_shape, dtype=dtype, device=device))

    def extra_repr(self) -> str:
        return f"layout={self.layout}, rank={self.rank}, scale={self.scale}"

    def delta(self) -> torch.Tensor:
        """The (scaled) low-rank update, shaped like the weight."""
        if self.layout == OUT_IN:
            update = self.lora_B @ self.lora_A
        else:
            product = torch.view_as_complex(self.lora_A) @ torch.view_as_complex(
                self.lora_B
            )
            update = torch.view_as_real(product)
            if self.layout == IN_OUT_MODES_COMPLEX:
                n_modes = update.dim() - 3
                update = update.permute(
                    n_modes, n_modes + 1, *range(n_modes), n_modes + 2
                )
                return self.scale * update
        return (self.scale * update).reshape(self.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The adapted weight."""
        return weight + self.delta()


def _adaptable(
    module: nn.Module, layouts: Mapping[type[nn.Module], AdaptableWeight]
) -> AdaptableWeight | None:
    for module_type, adaptable in layouts.items():
        if isinstance(module, module_type):
            return adaptable
    return None


def select_lora_targets(
    module: nn.Module,
    config: LoRAConfig,
    *,
    layouts: Mapping[type[nn.Module], AdaptableWeight] | None = None,
) -> list[tuple[str, nn.Module, AdaptableWeight]]:
    """The layers ``config`` adapts, as ``(name, module, adaptable weight)``.

    Args:
        module: the network (not wrapped for DDP).
        config: the LoRA config.
        layouts: adaptable module types; defaults to ``DEFAULT_LAYOUTS``.

    Raises:
        ValueError: if a pattern selects no adaptable layer, a targeted
            convolution is not 1x1, or a ``trainable_parameters`` pattern
            matches no parameter.
    """
    layouts = DEFAULT_LAYOUTS if layouts is None else layouts
    check_all_patterns_match(
        config.trainable_parameters,
        [n for n, _ in module.named_parameters()],
        field=f"{_FIELD}.trainable_parameters",
    )
    targets: list[tuple[str, nn.Module, AdaptableWeight]] = []
    for name, sub in module.named_modules():
        if not matches_any(name, config.target_modules):
            continue
        adaptable = _adaptable(sub, layouts)
        if adaptable is None:
            continue
        if isinstance(sub, nn.Conv2d) and (
            tuple(sub.kernel_size) != (1, 1) or sub.groups != 1
        ):
            raise ValueError(
                f"{_FIELD}.target_modules selects {name}, a {sub.kernel_size} "
                "convolution; LoRA adapts only 1x1 ungrouped convolutions, so "
                "narrow the patterns"
            )
        targets.append((name, sub, adaptable))
    empty = [
        p
        for p in config.target_modules
        if not any(matches_any(name, [p]) for name, _, _ in targets)
    ]
    if empty:
        adaptable_names = [
            n for n, m in module.named_modules() if _adaptable(m, layouts)
        ]
        raise ValueError(
            f"{_FIELD}.target_modules pattern(s) {empty} select no adaptable "
            f"layer; adaptable layers of this network: {adaptable_names}"
        )
    return targets


def apply_lora(
    module: nn.Module,
    config: LoRAConfig,
    *,
    layouts: Mapping[type[nn.Module], AdaptableWeight] | None = None,
) -> list[str]:
    """Add adapters to the targeted layers of ``module`` and freeze its base.

    Every base parameter not matched by ``config.trainable_parameters`` is
    frozen (including those frozen already). Apply before wrapping ``module``
    for data parallelism.

    Args:
        module: the network (not wrapped for DDP).
        config: the LoRA config.
        layouts: adaptable module types; defaults to ``DEFAULT_LAYOUTS``.

    Returns:
        The names of the adapted modules.

    Raises:
        ValueError: as ``select_lora_targets``, or if the module already has
            adapters.
    """
    if has_lora(module):
        raise ValueError("the network already has LoRA adapters; merge them first")
    targets = select_lora_targets(module, config, layouts=layouts)
    for name, parameter in module.named_parameters():
        if not matches_any(name, config.trainable_parameters):
            parameter.requires_grad_(False)
    for _, sub, adaptable in targets:
        weight = getattr(sub, adaptable.parameter)
        update = LowRankUpdate(
            weight.detach(),
            layout=adaptable.layout,
            rank=config.rank,
            scale=config.scale,
        )
        parametrize.register_parametrization(sub, adaptable.parameter, update)
    return [name for name, _, _ in targets]


def _lora_parametrized(module: nn.Module) -> list[tuple[nn.Module, str]]:
    found = []
    for sub in module.modules():
        if not parametrize.is_parametrized(sub):
            continue
        parametrizations = sub.parametrizations
        assert isinstance(parametrizations, nn.ModuleDict)
        for tensor_name, chain in parametrizations.items():
            assert isinstance(chain, nn.ModuleList)
            if any(isinstance(p, LowRankUpdate) for p in chain):
                found.append((sub, tensor_name))
    return found


def has_lora(module: nn.Module) -> bool:
    """Whether ``module`` carries LoRA adapters."""
    return bool(_lora_parametrized(module))


@torch.no_grad()
def merge_lora(module: nn.Module) -> int:
    """Fold every adapter into its base weight and remove the adapters.

    The merged weights keep the base parameters' ``requires_grad`` (frozen).

    Returns:
        The number of merged weights.
    """
    found = _lora_parametrized(module)
    for sub, tensor_name in found:
        parametrize.remove_parametrizations(sub, tensor_name, leave_parametrized=True)
    return len(found)


def _parametrized_original_key(key: str) -> tuple[str, str] | None:
    """``(module prefix, tensor name)`` if ``key`` is a parametrised original."""
    marker = _PARAMETRIZATIONS
    if key.startswith(marker):
        prefix, rest = "", key[len(marker) :]
    elif "." + marker in key:
        head, rest = key.split("." + marker, 1)
        prefix = head + "."
    else:
        return None
    tensor_name, _, tail = rest.partition(".")
    return (prefix, tensor_name) if tail == "original" else None


def _is_parametrization_key(key: str) -> bool:
    return key.startswith(_PARAMETRIZATIONS) or "." + _PARAMETRIZATIONS in key


@torch.no_grad()
def plain_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every adapted weight merged under its plain name.

    Equal to ``state_dict()`` for a module without adapters; loadable into
    the same network built without LoRA.
    """
    state = module.state_dict()
    if not has_lora(module):
        return state
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        original = _parametrized_original_key(key)
        if original is not None:
            prefix, tensor_name = original
            sub = module.get_submodule(prefix[:-1]) if prefix else module
            plain[prefix + tensor_name] = getattr(sub, tensor_name).detach().clone()
        elif not _is_parametrization_key(key):
            plain[key] = value
    return plain


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights and adapters of the adapted layers (to resume training)."""
    return {k: v for k, v in module.state_dict().items() if _is_parametrization_key(k)}


def load_state_with_adapters(
    module: nn.Module,
    plain: Mapping[str, torch.Tensor],
    adapters: Mapping[str, torch.Tensor] | None,
) -> None:
    """Load ``plain_state_dict`` and ``adapter_state_dict`` output into ``module``.

    Raises:
        ValueError: if the module has adapters and ``adapters`` is None, or
            the other way round (the checkpoint is from another phase setup).
    """
    if not has_lora(module):
        if adapters:
            raise ValueError(
                "the checkpoint holds LoRA adapters but the network has none; "
                "resume with the same lora settings the checkpoint was made with"
            )
        module.load_state_dict(plain)
        return
    if adapters is None:
        raise ValueError(
            "the network has LoRA adapters but the checkpoint holds none; "
            "resume with the same lora settings the checkpoint was made with"
        )
    adapted = {
        prefix + tensor_name
        for key in adapters
        if (found := _parametrized_original_key(key)) is not None
        for prefix, tensor_name in [found]
    }
    full = {k: v for k, v in plain.items() if k not in adapted}
    full.update(adapters)
    module.load_state_dict(full)
