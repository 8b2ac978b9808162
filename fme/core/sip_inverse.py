"""Local inverse simulators used by scale-invariant physics (SIP) training.

A local inverse answers: given the current input ``x`` with ``y = P(x)`` and a
nearby goal ``y_goal``, which ``x_tilde`` close to ``x`` has ``P(x_tilde) ≈
y_goal``? Two generic strategies need only a differentiable ``P``:

- :func:`newton_inverse`: one saddle-free Newton step on
  ``l(x) = ½‖P(x) − y_goal‖²`` with the exact per-sample Hessian.
- :func:`gauss_newton_inverse`: ``Δx = J⁺ (y_goal − y)``, the least-squares
  solution of the linearised problem, optionally Levenberg–Marquardt damped.

Both treat dim 0 as the batch and require ``P`` to act on every sample
independently (no batch statistics): per-sample Jacobians and Hessians are then
the diagonal blocks of the derivatives of the batch-summed function. They are
computed as ``vmap``-ed vector-Jacobian products over the cotangent basis
(``torch.autograd.grad(..., is_grads_batched=True)``, what ``torch.func.jacrev``
does) with the physics evaluated once on the whole batch, so physics functions
that close over batched context (forcings, an input state) work unchanged. Plain
autograd is used instead of ``torch.func.grad``/``jacrev`` because their first
call imports ``torch._dynamo`` (seconds of start-up) for no numerical gain.

Cost: ``newton_inverse`` builds an ``n × n`` Hessian per sample (``n`` the
number of elements of one sample of ``x``) and eigendecomposes it; use it for
small per-sample inputs. For large fields supply an analytic inverse.
"""

from collections.abc import Callable

import torch

Physics = Callable[[torch.Tensor], torch.Tensor]


def _flat_physics(
    physics: Physics, x_shape: torch.Size
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``P`` as a map from ``[B, n]`` to ``[B, m]`` (flattened per sample)."""
    batch = x_shape[0]

    def flat(x_flat: torch.Tensor) -> torch.Tensor:
        return physics(x_flat.reshape(x_shape)).reshape(batch, -1)

    return flat


def _check_goal(y: torch.Tensor, y_goal: torch.Tensor) -> None:
    if y.shape[0] != y_goal.shape[0] or y.numel() != y_goal.numel():
        raise ValueError(
            f"physics output has shape {tuple(y.shape)} but the target has shape "
            f"{tuple(y_goal.shape)}; they must match sample by sample"
        )


def _batched_vjp(
    output: torch.Tensor, x: torch.Tensor, *, create_graph: bool = False
) -> torch.Tensor:
    """Rows ``∂output[:, i] / ∂x`` for every column ``i`` of ``output`` ``[B, k]``.

    One vector-Jacobian product per column, vmapped over the cotangents
    (``is_grads_batched``). Returns ``[k, B, n]``.
    """
    k = output.shape[-1]
    if not output.requires_grad:  # output does not depend on x at all
        return x.new_zeros(k, *x.shape)
    basis = torch.eye(k, dtype=output.dtype, device=output.device)
    cotangents = basis.unsqueeze(1).expand(k, *output.shape)
    (rows,) = torch.autograd.grad(
        output,
        x,
        grad_outputs=cotangents,
        is_grads_batched=True,
        create_graph=create_graph,
        allow_unused=True,
        materialize_grads=True,
    )
    return rows


def per_sample_jacobian(physics: Physics, x: torch.Tensor) -> torch.Tensor:
    """The Jacobian ``∂P(x)_b / ∂x_b`` of every sample, flattened.

    Args:
        physics: batch-first function, acting independently on each sample.
        x: input of shape ``[B, *x_shape]``.

    Returns:
        Tensor of shape ``[B, m, n]`` with ``m`` and ``n`` the per-sample sizes
        of the output and the input.
    """
    with torch.enable_grad():
        x_flat = x.detach().reshape(x.shape[0], -1).requires_grad_(True)
        y = _flat_physics(physics, x.shape)(x_flat)
        # sample b only feeds output b, so row i of the batch-summed Jacobian
        # holds every sample's own row i.
        return _batched_vjp(y, x_flat).permute(1, 0, 2).detach()


def per_sample_gradient_and_hessian(
    loss: Callable[[torch.Tensor], torch.Tensor], x_flat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and Hessian of a per-sample loss, for every sample.

    Args:
        loss: maps ``[B, n]`` to per-sample losses ``[B]``; sample ``b``'s loss
            may depend only on row ``b``.
        x_flat: point of shape ``[B, n]``.

    Returns:
        ``(g, H)`` of shapes ``[B, n]`` and ``[B, n, n]``, detached.
    """
    with torch.enable_grad():
        v = x_flat.detach().requires_grad_(True)
        total = loss(v).sum()
        if not total.requires_grad:  # loss does not depend on x at all
            zeros = torch.zeros_like(v)
            return zeros, zeros.unsqueeze(-1).expand(*v.shape, v.shape[-1])
        (grad,) = torch.autograd.grad(total, v, create_graph=True)
        hessian = _batched_vjp(grad, v)  # [n, B, n]
    return grad.detach(), hessian.permute(1, 0, 2).detach()


def saddle_free_newton_step(
    grad: torch.Tensor,
    hessian: torch.Tensor,
    *,
    damping: float = 0.0,
    max_step: float | None = None,
) -> torch.Tensor:
    """``Δx = −|H|⁻¹ g`` per sample, in the eigenbasis of ``H``.

    With ``H = Σᵢ λᵢ vᵢ vᵢᵀ`` the step is ``Δx = −Σᵢ (vᵢ·g) / (|λᵢ| + damping) vᵢ``.
    Taking ``|λᵢ|`` (Dauphin et al. 2014) turns ascent directions at saddles and
    maxima into descent directions. Components whose damped curvature is zero
    up to round-off (``|λᵢ| + damping ≤ n·eps·maxⱼ|λⱼ|``, the ``pinv`` rule)
    get no step, as in a pseudo-inverse. ``max_step`` clamps
    every component ``|Δx·vᵢ|``, which only binds in low-curvature directions.

    Args:
        grad: gradients ``[B, n]``.
        hessian: symmetric Hessians ``[B, n, n]``.
        damping: non-negative curvature added to every ``|λᵢ|``.
        max_step: optional cap on the step along each eigenvector.

    Returns:
        The steps ``[B, n]``.
    """
    sym = 0.5 * (hessian + hessian.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(sym)
    curvature = evals.abs()
    n = grad.shape[-1]
    tol = n * torch.finfo(curvature.dtype).eps * curvature.amax(dim=-1, keepdim=True)
    curvature = curvature + damping
    singular = curvature <= tol
    components = torch.einsum("bni,bn->bi", evecs, grad)
    step = -components / torch.where(singular, torch.ones_like(curvature), curvature)
    step = torch.where(singular, torch.zeros_like(step), step)
    if max_step is not None:
        step = step.clamp(min=-max_step, max=max_step)
    return torch.einsum("bni,bi->bn", evecs, step)


def newton_inverse(
    x: torch.Tensor,
    y_goal: torch.Tensor,
    *,
    physics: Physics,
    damping: float = 0.0,
    max_step: float | None = None,
) -> torch.Tensor:
    """Local inverse by one saddle-free Newton step on ``½‖P(x) − y_goal‖²``.

    For each sample, with ``l(x) = ½‖P(x) − y_goal‖²``, gradient ``g = Jᵀ r``
    (``r = P(x) − y_goal``) and exact Hessian ``H = JᵀJ + Σₖ rₖ ∇²Pₖ``, returns
    ``x − |H|⁻¹ g`` (see :func:`saddle_free_newton_step`). For linear ``P`` this
    is the exact least-squares pre-image of ``y_goal``; for a quadratic ``l``
    it is its minimiser.

    Args:
        x: current input ``[B, *x_shape]``.
        y_goal: wanted output, same shape as ``P(x)``.
        physics: batch-first differentiable physics, independent per sample.
        damping: see :func:`saddle_free_newton_step`.
        max_step: see :func:`saddle_free_newton_step`.

    Returns:
        Detached ``x_tilde`` with the shape of ``x``.
    """
    x_flat = x.detach().reshape(x.shape[0], -1)
    flat = _flat_physics(physics, x.shape)
    with torch.no_grad():
        y = flat(x_flat)
    goal = y_goal.detach().reshape(x.shape[0], -1)
    _check_goal(y, y_goal)

    def loss(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (flat(v) - goal).pow(2).sum(dim=-1)

    grad, hessian = per_sample_gradient_and_hessian(loss, x_flat)
    step = saddle_free_newton_step(grad, hessian, damping=damping, max_step=max_step)
    return (x_flat + step).reshape(x.shape).detach()


def gauss_newton_inverse(
    x: torch.Tensor,
    y_goal: torch.Tensor,
    *,
    physics: Physics,
    damping: float = 0.0,
) -> torch.Tensor:
    """Local inverse by a (damped) Gauss–Newton step ``Δx = J⁺ (y_goal − P(x))``.

    Without damping ``J⁺`` is the Moore–Penrose pseudo-inverse (the
    minimum-norm least-squares solution of ``J Δx = Δy``, well defined for
    rank-deficient or non-square ``J``). With ``damping = λ > 0`` it is
    Levenberg–Marquardt: ``Δx = (JᵀJ + λI)⁻¹ Jᵀ Δy``.

    Args:
        x: current input ``[B, *x_shape]``.
        y_goal: wanted output, same shape as ``P(x)``.
        physics: batch-first differentiable physics, independent per sample.
        damping: non-negative λ.

    Returns:
        Detached ``x_tilde`` with the shape of ``x``.
    """
    x_det = x.detach()
    with torch.no_grad():
        y = physics(x_det)
    _check_goal(y, y_goal)
    delta_y = (y_goal.detach() - y).reshape(x.shape[0], -1, 1)
    jac = per_sample_jacobian(physics, x_det)
    if damping == 0.0:
        delta_x = torch.linalg.pinv(jac) @ delta_y
    else:
        jt = jac.transpose(-1, -2)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        delta_x = torch.linalg.solve(jt @ jac + damping * eye, jt @ delta_y)
    return (x_det + delta_x.reshape(x.shape)).detach()
