"""Freezing network parameters by name: ``frozen_parameters: {include, exclude}``.

A frozen parameter has ``requires_grad = False``: it gets no gradient, the
optimiser never sees it, and DDP (which only registers parameters that need
gradients) neither all-reduces nor waits for it. Freezing must therefore be
applied *before* the network is wrapped for data parallelism; ACE's
``frozen_parameters`` key and meaning are kept.
"""

import dataclasses
import logging

from torch import nn

from fme.core.wildcard import check_all_patterns_match, matches_any

_FIELD = "frozen_parameters"


@dataclasses.dataclass
class FrozenParameterConfig:
    """Which network parameters are frozen (not trained).

    A parameter is frozen when an ``include`` pattern matches its name and no
    ``exclude`` pattern does, so ``{include: ["*"], exclude: ["decoder.*"]}``
    trains only the decoder. Names are those of ``module.named_parameters()``
    without a data-parallel prefix, e.g. ``encoder.0.weight``; see
    ``fme.core.wildcard`` for the pattern syntax. Every pattern must match
    some parameter. (ACE requires every parameter to be listed in one of the
    two lists and forbids overlaps; configs valid there mean the same here.)

    Attributes:
        include: patterns of parameters to freeze.
        exclude: patterns of parameters to keep trainable even if ``include``
            matches them.
    """

    include: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        for name in ("include", "exclude"):
            patterns = getattr(self, name)
            if any(not isinstance(p, str) or not p for p in patterns):
                raise ValueError(
                    f"{_FIELD}.{name} must be a list of non-empty name patterns, "
                    f"got {patterns}"
                )

    @property
    def freezes_anything(self) -> bool:
        """Whether any pattern is given."""
        return bool(self.include)

    def frozen_names(self, names: list[str]) -> list[str]:
        """The names among ``names`` this config freezes."""
        return [
            n
            for n in names
            if matches_any(n, self.include) and not matches_any(n, self.exclude)
        ]

    def check(self, names: list[str]) -> list[str]:
        """The frozen names among a network's parameter ``names``, validated.

        Raises:
            ValueError: if a pattern matches no parameter, or if every
                parameter would be frozen.
        """
        check_all_patterns_match(self.include, names, field=f"{_FIELD}.include")
        check_all_patterns_match(self.exclude, names, field=f"{_FIELD}.exclude")
        frozen = self.frozen_names(names)
        if names and len(frozen) == len(names):
            raise ValueError(
                f"{_FIELD} freezes every parameter (include {self.include}, "
                f"exclude {self.exclude}), so nothing would train; add "
                "patterns to frozen_parameters.exclude or narrow include"
            )
        return frozen

    def apply(self, module: nn.Module) -> list[str]:
        """Set ``requires_grad = False`` on the frozen parameters of ``module``.

        Parameters not frozen are left as they are (call ``unfreeze_all`` first
        to start from a fully trainable network).

        Returns:
            The names of the frozen parameters.

        Raises:
            ValueError: as ``check``.
        """
        named = dict(module.named_parameters())
        frozen = self.check(list(named))
        for name in frozen:
            named[name].requires_grad_(False)
        return frozen


def unfreeze_all(module: nn.Module) -> None:
    """Make every parameter of ``module`` trainable again."""
    for parameter in module.parameters():
        parameter.requires_grad_(True)


def log_trainable_parameters(module: nn.Module, *, label: str = "") -> int:
    """Log how many parameters (elements) train; returns the trainable count."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    prefix = f"{label}: " if label else ""
    logging.info(
        "%straining %d of %d parameters (%d frozen)",
        prefix,
        trainable,
        total,
        total - trainable,
    )
    return trainable
