"""Scale-invariant physics (SIP) training: proxy targets and proxy losses.

Gradient descent through a physics operator ``P`` inherits its conditioning: if
``P`` scales one direction by ``1/ξ`` and another by ``ξ``, the gradient of
``½‖P(x) − y*‖²`` is off by ``ξ²`` between them and training crawls. SIP
training (Holl, Koltun & Thuerey, "Scale-invariant Learning by Physics
Inversion", NeurIPS 2022; "Physics-based Deep Learning", chapter "Scale
Invariant Physics Training") replaces the physics gradient by an update from an
inverse simulator. For a prediction ``x = f(y*; θ)`` with ``y = P(x)``:

1. Newton step on ``L(y) = ½‖y − y*‖²`` in ``y`` (its Hessian is the
   identity): ``Δy = η (y* − y)``.
2. Pull the step back through a local inverse:
   ``x̃ = P⁻¹(y + Δy; x)`` (the pre-image of ``y + Δy`` nearest ``x``).
3. Train the network on the proxy loss ``½‖x − stopgrad(x̃)‖²`` with any torch
   optimiser.

For linear invertible ``P`` this gives ``x̃ − x = η P⁻¹(y* − y)``: the update
does not depend on how ``P`` scales its directions. ``η`` sets how far along the
way to the target the inverse is asked to go; the network learning rate sets
how fast ``θ`` follows the proxy targets (to first order the effective rate is
their product). Every inverse strategy receives the goal ``y + Δy``: the
``newton`` strategy therefore takes its step on ``½‖P(x) − (y + Δy)‖²``, which
for ``η = 1`` is the saddle-free Newton step on the training loss itself and
for ``η < 1`` differs from ``η`` times that step only through the curvature of
``P`` (identical for linear ``P``).

The API only needs the raw prediction ``x``, a differentiable batch-first
physics function and the target ``y*``; nothing here knows about the
atmosphere, so the same functions serve a toy problem, a control problem
(:func:`multi_step_sip_loss`) or a corrector.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

import torch

from fme.core.sip_inverse import Physics, gauss_newton_inverse, newton_inverse

AnalyticInverse = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``P⁻¹(y_goal, x) -> x_tilde``: the pre-image of ``y_goal`` nearest ``x``."""

_F = TypeVar("_F", bound=Callable)

INVERSE_STRATEGIES = ("analytic", "newton", "gauss_newton")
PROXY_NORMS = ("l2", "l1")


@dataclasses.dataclass
class SIPConfig:
    """How SIP training computes its proxy targets and proxy loss.

    Attributes:
        inverse: the local inverse simulator. ``"analytic"``: a user-supplied
            ``P⁻¹(y_goal, x)``; ``"newton"``: one saddle-free Newton step on
            ``½‖P(x) − y_goal‖²`` with the exact per-sample Hessian (small
            per-sample inputs only); ``"gauss_newton"``: ``Δx = J⁺ Δy``.
        eta: step size ``η`` of the Newton step in ``y``, in ``(0, 1]``;
            ``1`` asks the inverse for the target itself.
        proxy_norm: norm of the proxy loss, ``"l2"`` (``½‖x − x̃‖²``) or
            ``"l1"`` (``‖x − x̃‖₁``, bounded gradients when the inverse
            occasionally proposes far-away targets).
        damping: non-negative Levenberg–Marquardt damping added to the
            curvature (``JᵀJ + λI`` for ``gauss_newton``, ``|λᵢ| + λ`` for
            ``newton``). Must be 0 for ``analytic``.
        max_step: for ``newton`` only, an optional positive cap on the step
            along each Hessian eigenvector (binds in low-curvature directions,
            where the Newton step is long and the quadratic model poor).
    """

    inverse: str = "newton"
    eta: float = 1.0
    proxy_norm: str = "l2"
    damping: float = 0.0
    max_step: float | None = None

    def __post_init__(self) -> None:
        if self.inverse not in INVERSE_STRATEGIES:
            raise ValueError(
                f"sip.inverse must be one of {list(INVERSE_STRATEGIES)}, "
                f"got {self.inverse!r}"
            )
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(f"sip.eta must be in (0, 1], got {self.eta}")
        if self.proxy_norm not in PROXY_NORMS:
            raise ValueError(
                f"sip.proxy_norm must be one of {list(PROXY_NORMS)}, "
                f"got {self.proxy_norm!r}"
            )
        if not self.damping >= 0.0:
            raise ValueError(f"sip.damping must be >= 0, got {self.damping}")
        if self.damping > 0.0 and self.inverse == "analytic":
            raise ValueError(
                "sip.damping only applies to inverse 'newton' or 'gauss_newton', "
                "got inverse 'analytic'; set damping to 0"
            )
        if self.max_step is not None:
            if not self.max_step > 0.0:
                raise ValueError(
                    f"sip.max_step must be null or > 0, got {self.max_step}"
                )
            if self.inverse != "newton":
                raise ValueError(
                    "sip.max_step only applies to inverse 'newton', got inverse "
                    f"{self.inverse!r}; set max_step to null"
                )

    def proxy_target(
        self,
        x: torch.Tensor,
        y_target: torch.Tensor,
        *,
        physics: Physics,
        analytic_inverse: AnalyticInverse | None = None,
    ) -> torch.Tensor:
        """The detached SIP proxy target ``x̃``; see :func:`sip_proxy_target`."""
        return sip_proxy_target(
            x,
            y_target,
            physics=physics,
            inverse=self.inverse,
            eta=self.eta,
            analytic_inverse=analytic_inverse,
            damping=self.damping,
            max_step=self.max_step,
        )

    def proxy_loss(
        self,
        x: torch.Tensor,
        y_target: torch.Tensor,
        *,
        physics: Physics,
        analytic_inverse: AnalyticInverse | None = None,
    ) -> torch.Tensor:
        """The SIP proxy loss of prediction ``x`` for target ``y_target``.

        Args:
            x: network prediction ``[B, *x_shape]`` (keeps its graph).
            y_target: target ``y*`` of the physics output.
            physics: batch-first differentiable ``P``.
            analytic_inverse: ``P⁻¹(y_goal, x)``, required iff
                ``inverse == "analytic"``.

        Returns:
            Scalar proxy loss whose gradient w.r.t. ``x`` is the SIP update.
        """
        x_tilde = self.proxy_target(
            x, y_target, physics=physics, analytic_inverse=analytic_inverse
        )
        return sip_proxy_loss(x, x_tilde, norm=self.proxy_norm)


def sip_proxy_target(
    x: torch.Tensor,
    y_target: torch.Tensor,
    *,
    physics: Physics,
    inverse: str = "newton",
    eta: float = 1.0,
    analytic_inverse: AnalyticInverse | None = None,
    damping: float = 0.0,
    max_step: float | None = None,
) -> torch.Tensor:
    """The SIP proxy target ``x̃ = P⁻¹(y + η (y* − y); x)`` with ``y = P(x)``.

    Args:
        x: prediction ``[B, *x_shape]``; only its value is used.
        y_target: ``y*``, the shape of ``P(x)``.
        physics: batch-first differentiable ``P``, acting on each sample
            independently (needed by ``newton`` and ``gauss_newton``).
        inverse: ``"analytic"``, ``"newton"`` or ``"gauss_newton"`` (see
            :class:`SIPConfig`).
        eta: Newton step size in ``y``, in ``(0, 1]``.
        analytic_inverse: ``P⁻¹(y_goal, x)``, required iff
            ``inverse == "analytic"``.
        damping: see :class:`SIPConfig`.
        max_step: see :class:`SIPConfig`.

    Returns:
        ``x̃``, detached, with the shape of ``x``.
    """
    config = SIPConfig(
        inverse=inverse, eta=eta, damping=damping, max_step=max_step
    )  # validates the arguments
    if (analytic_inverse is not None) != (config.inverse == "analytic"):
        raise ValueError(
            "analytic_inverse must be given exactly when inverse is 'analytic', "
            f"got inverse {config.inverse!r} and analytic_inverse "
            f"{'set' if analytic_inverse is not None else 'None'}"
        )
    x_det = x.detach()
    y_star = y_target.detach()
    with torch.no_grad():
        y = physics(x_det)
    if y.shape != y_star.shape:
        raise ValueError(
            f"physics output has shape {tuple(y.shape)} but y_target has shape "
            f"{tuple(y_star.shape)}"
        )
    y_goal = y + config.eta * (y_star - y)
    if analytic_inverse is not None:
        with torch.no_grad():
            x_tilde = analytic_inverse(y_goal, x_det)
    elif config.inverse == "newton":
        x_tilde = newton_inverse(
            x_det, y_goal, physics=physics, damping=damping, max_step=max_step
        )
    else:
        x_tilde = gauss_newton_inverse(x_det, y_goal, physics=physics, damping=damping)
    if x_tilde.shape != x.shape:
        raise ValueError(
            f"the inverse returned shape {tuple(x_tilde.shape)}, expected the shape "
            f"of x {tuple(x.shape)}"
        )
    return x_tilde.detach()


def sip_proxy_loss(
    x: torch.Tensor, x_target: torch.Tensor, norm: str = "l2"
) -> torch.Tensor:
    """Proxy loss between the prediction and its (detached) SIP target.

    ``"l2"``: ``mean_b ½‖x_b − x̃_b‖²``, whose gradient w.r.t. ``x_b`` is
    ``(x_b − x̃_b) / B``, i.e. the SIP update itself. ``"l1"``:
    ``mean_b ‖x_b − x̃_b‖₁``. Norms are summed over all non-batch dims.

    Args:
        x: prediction ``[B, ...]`` (keeps its graph).
        x_target: proxy target, same shape; treated as a constant.
        norm: ``"l2"`` or ``"l1"``.

    Returns:
        Scalar loss.
    """
    if norm not in PROXY_NORMS:
        raise ValueError(f"norm must be one of {list(PROXY_NORMS)}, got {norm!r}")
    if x.shape != x_target.shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but x_target has {tuple(x_target.shape)}"
        )
    diff = (x - x_target.detach()).reshape(x.shape[0], -1)
    if norm == "l2":
        per_sample = 0.5 * diff.pow(2).sum(dim=-1)
    else:
        per_sample = diff.abs().sum(dim=-1)
    return per_sample.mean()


def multi_step_sip_loss(
    xs: Sequence[torch.Tensor],
    y_targets: Sequence[torch.Tensor],
    *,
    physics: Physics | Sequence[Physics],
    config: SIPConfig,
    analytic_inverse: AnalyticInverse | Sequence[AnalyticInverse] | None = None,
) -> torch.Tensor:
    """Sum of per-step SIP proxy losses, ``Σₜ proxy(xₜ, x̃ₜ)``.

    Each step ``t`` has its own prediction ``xₜ`` (e.g. a control or the raw
    output of an autoregressive step), physics ``Pₜ`` and target ``yₜ*``; its
    proxy target is computed from ``xₜ`` alone, so gradients reach earlier steps
    only through the network graph that produced ``xₜ``.

    Args:
        xs: predictions, one per step.
        y_targets: targets, one per step.
        physics: one ``P`` for all steps, or one per step.
        config: SIP settings shared by every step.
        analytic_inverse: for ``config.inverse == "analytic"``, one inverse for
            all steps or one per step.

    Returns:
        Scalar sum over steps.
    """
    n_steps = len(xs)
    if n_steps == 0:
        raise ValueError("multi_step_sip_loss needs at least one step")
    if len(y_targets) != n_steps:
        raise ValueError(f"got {n_steps} predictions but {len(y_targets)} targets")
    physics_list = _per_step(physics, n_steps, "physics")
    inverse_list: list[AnalyticInverse | None] = (
        [None] * n_steps
        if analytic_inverse is None
        else list(_per_step(analytic_inverse, n_steps, "analytic_inverse"))
    )
    total = xs[0].new_zeros(())
    for x, y_target, p, inv in zip(
        xs, y_targets, physics_list, inverse_list, strict=True
    ):
        total = total + config.proxy_loss(x, y_target, physics=p, analytic_inverse=inv)
    return total


def _per_step(value: _F | Sequence[_F], n_steps: int, name: str) -> list[_F]:
    if callable(value):
        return [cast(_F, value)] * n_steps
    values = list(cast(Sequence[_F], value))
    if len(values) != n_steps:
        raise ValueError(f"got {len(values)} {name} for {n_steps} steps")
    return values
