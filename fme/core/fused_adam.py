"""Adam and AdamW on torch's fused kernels, without importing ``torch._dynamo``.

``torch.optim.Adam(fused=True)`` updates the parameters of one (device, dtype)
group with a single kernel call: ``torch._foreach_add_(steps, 1)`` followed by
``torch._fused_adam_`` (``torch._fused_adamw_`` for decoupled weight decay).
The ``torch.optim.Optimizer`` machinery around that call imports
``torch._dynamo`` the first time it is used (``add_param_group``,
``zero_grad``, ``state_dict`` and ``load_state_dict`` are wrapped by
``torch._disable_dynamo``, and ``step`` places graph breaks), which costs
1.5-3 s of every run's start-up although nothing else in a default training
run needs it.

``FusedAdam`` and ``FusedAdamW`` make the same kernel calls with the same
arguments, so parameters and state are bitwise those of
``torch.optim.Adam`` / ``torch.optim.AdamW`` with ``fused=True``; one
difference in how, not what: a parameter stored as a permuted view is passed
as the contiguous view of its memory, which the kernel updates in place
instead of copying it in and out (the update is elementwise). They keep
torch's formats, so checkpoints move freely between them and torch's
optimisers:

- ``param_groups`` carry torch's option keys (``lr``, ``betas``, ``eps``,
  ``weight_decay``, ``amsgrad``, ``maximize``, ``foreach``, ``capturable``,
  ``differentiable``, ``fused``, ``decoupled_weight_decay``) with torch's
  defaults, ``fused: True``;
- the state of a parameter is ``step`` (a float32 0-dim tensor on the
  parameter's device, as the fused path keeps it), ``exp_avg``,
  ``exp_avg_sq`` and, with ``amsgrad``, ``max_exp_avg_sq``;
- ``state_dict()`` numbers the parameters in order across the groups and holds
  state only for parameters that were stepped; ``load_state_dict`` accepts
  what torch's Adam/AdamW wrote, fused or not (a ``step`` on the CPU, of
  another float dtype or a plain number is moved to the parameter's device as
  float32), and what these classes write loads into torch's.

They are ``torch.optim.Optimizer`` subclasses, because torch's learning-rate
schedulers require one (they read ``param_groups`` and wrap ``step``), but
they set the base class's attributes themselves instead of calling its
``__init__`` and override every method of it that would import
``torch._dynamo``. Step pre/post hooks, state-dict hooks, ``repr`` and
pickling work as in torch.

Not supported (``OptimizationConfig`` builds torch's optimiser instead):
tensor learning rates or betas, ``capturable``, ``differentiable``,
``foreach``, complex or non-floating parameters, devices other than CPU and
CUDA, and gradient scaling inside the step (``torch.amp.GradScaler`` still
works: it unscales the gradients before calling ``step``). Sparse gradients
are refused, as by torch.
"""

import copy
import dataclasses
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch

SUPPORTED_DEVICES = ("cpu", "cuda")
# The implementation choices of torch's Adam, at the values of its fused path;
# they are saved in every group (torch writes them) but cannot be changed here.
_IMPLEMENTATION_OPTIONS: dict[str, Any] = {
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
}
# options torch's Adam.__setstate__ fills in when an older state dict lacks them
_LATER_OPTIONS: dict[str, Any] = {
    "amsgrad": False,
    "maximize": False,
    "decoupled_weight_decay": False,
}


@dataclasses.dataclass
class _KernelArguments:
    """The tensor lists of one fused-kernel call (one device and dtype)."""

    params: list[torch.Tensor] = dataclasses.field(default_factory=list)
    grads: list[torch.Tensor] = dataclasses.field(default_factory=list)
    exp_avgs: list[torch.Tensor] = dataclasses.field(default_factory=list)
    exp_avg_sqs: list[torch.Tensor] = dataclasses.field(default_factory=list)
    max_exp_avg_sqs: list[torch.Tensor] = dataclasses.field(default_factory=list)
    steps: list[torch.Tensor] = dataclasses.field(default_factory=list)


def _check_number(name: str, value: Any, *, below_one: bool = False) -> None:
    """Refuse a tensor, a non-number or a negative value of an option."""
    if isinstance(value, torch.Tensor):
        raise TypeError(
            f"FusedAdam takes a number for {name}, got a tensor; use "
            "torch.optim.Adam for tensor hyperparameters"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"FusedAdam option {name} must be a number, got {value!r}")
    if value < 0 or (below_one and value >= 1):
        allowed = "in [0, 1)" if below_one else "non-negative"
        raise ValueError(f"Invalid {name}: {value} (must be {allowed})")


def _check_group_options(group: dict[str, Any]) -> None:
    """Validate a parameter group's options as torch's Adam does."""
    _check_number("learning rate", group["lr"])
    _check_number("epsilon value", group["eps"])
    _check_number("weight_decay value", group["weight_decay"])
    betas = group["betas"]
    if isinstance(betas, torch.Tensor) or len(betas) != 2:
        raise ValueError(f"betas must be a pair of floats, got {betas!r}")
    if not all(isinstance(beta, float) for beta in betas):
        # torch refuses ints too (floats or tensors); tensors are refused here
        raise ValueError(f"betas must be two floats, got {betas!r}")
    for index, beta in enumerate(betas):
        _check_number(f"beta parameter at index {index}", beta, below_one=True)
    for name in ("amsgrad", "maximize", "decoupled_weight_decay"):
        if not isinstance(group[name], bool):
            raise TypeError(
                f"FusedAdam option {name} must be a bool, got {group[name]!r}"
            )
    for name, value in _IMPLEMENTATION_OPTIONS.items():
        if group[name] != value:
            raise ValueError(
                f"FusedAdam always runs torch's fused kernel, so {name} must be "
                f"{value}, got {group[name]!r}; use torch.optim.Adam for another "
                "implementation"
            )


def _check_fused_parameter(param: torch.Tensor) -> None:
    if not (param.is_floating_point() and param.device.type in SUPPORTED_DEVICES):
        raise ValueError(
            "FusedAdam needs floating-point parameters on "
            f"{' or '.join(SUPPORTED_DEVICES)}, got {param.dtype} on "
            f"{param.device.type}; use torch.optim.Adam for these parameters"
        )


def _in_memory_order(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """A parameter, its gradient and moments as contiguous views, if possible.

    The update is elementwise, so any common layout gives the same numbers;
    but the fused kernel copies a non-contiguous tensor in and back out. A
    parameter stored as a permuted view (the SFNO's spectral weights keep
    ACE's shape over mode-major memory) is dense in another axis order: when
    the gradient and moments share its strides, all of them are passed
    permuted to that order, which is contiguous. Otherwise they are passed as
    they are.
    """
    first = tensors[0]
    if first.is_contiguous() or any(t.stride() != first.stride() for t in tensors):
        return tensors
    strides = first.stride()
    order = sorted(range(first.dim()), key=lambda axis: -strides[axis])
    permuted = [t.permute(order) for t in tensors]
    return permuted if permuted[0].is_contiguous() else tensors


def _like_parameter(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A saved moment on the parameter's device and dtype, with its strides
    (a state dict written with another memory layout, e.g. by torch's Adam on
    ACE's contiguous weights, would otherwise keep every later step on the
    kernel's copying path)."""
    value = value.to(dtype=param.dtype, device=param.device)
    if value.shape != param.shape or value.stride() == param.stride():
        return value
    return torch.empty_like(param).copy_(value)


def _loaded_step(value: Any, param: torch.Tensor) -> torch.Tensor:
    """A saved ``step`` (tensor anywhere, or a number) as the fused path keeps it."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype=torch.float32, device=param.device)
    return torch.tensor(float(value), dtype=torch.float32, device=param.device)


class FusedAdam(torch.optim.Optimizer):
    """``torch.optim.Adam(fused=True)`` without torch's ``Optimizer`` machinery.

    Same arguments, defaults, updates and state as torch's Adam with
    ``fused=True`` (see the module docstring for what is not supported).

    Args:
        params: parameters, ``(name, parameter)`` pairs, or dicts defining
            parameter groups (``params`` and any options to override).
        lr: learning rate.
        betas: decay rates of the running averages of the gradient and of its
            square.
        eps: added to the denominator for numerical stability.
        weight_decay: L2 penalty (decoupled from the gradient if
            ``decoupled_weight_decay``).
        amsgrad: use the AMSGrad variant (the maximum of the second moments).
        maximize: maximise the objective instead of minimising it.
        decoupled_weight_decay: decay the weights directly (AdamW).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        # Optimizer.__init__ is not called (its add_param_group imports
        # torch._dynamo); this sets the attributes it would set.
        if isinstance(betas, torch.Tensor):
            raise TypeError("FusedAdam takes betas as a pair of floats, got a tensor")
        self.defaults: dict[str, Any] = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            **_IMPLEMENTATION_OPTIONS,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        _check_group_options(self.defaults)
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        # wraps step to run the step hooks (and names it for the profiler)
        self._patch_step_function()
        if isinstance(params, torch.Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of "
                f"Tensors or dicts, but got {torch.typename(params)}"
            )
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        self._warned_capturable_if_run_uncaptured = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, with options overriding the defaults.

        Raises:
            TypeError: if ``param_group`` is not a dict, its parameters are a
                set or not tensors.
            ValueError: for a non-leaf, non-floating or unsupported-device
                parameter, a parameter already in another group, named and
                unnamed parameters mixed, or an invalid option.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params = param_group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, "
                "but the ordering of tensors in sets will change between runs. "
                "Please use a list instead."
            )
        params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        if names and len(names) != len(tensors):
            raise ValueError(
                "all optimizer params should be with/without names. Some param "
                "names are missing"
            )
        param_group["params"] = tensors
        if names:
            param_group["param_names"] = names
        for param in tensors:
            if not isinstance(param, torch.Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is "
                    + torch.typename(param)
                )
            if not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
            _check_fused_parameter(param)
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)
        _check_group_options(param_group)
        if len(tensors) != len(set(tensors)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; "
                "in future, this will cause an error; see "
                "github.com/pytorch/pytorch/issues/40967 for more information",
                stacklevel=3,
            )
        for group in self.param_groups:
            if ("param_names" in param_group) != ("param_names" in group):
                kind = "with names" if "param_names" in param_group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {kind} to the optimizer"
                )
            if not set(group["params"]).isdisjoint(tensors):
                raise ValueError(
                    "some parameters appear in more than one parameter group"
                )
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients: drop them (default) or zero them in place."""
        to_zero: defaultdict[tuple[torch.device, torch.dtype], list[torch.Tensor]]
        to_zero = defaultdict(list)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                    continue
                if p.grad.grad_fn is not None:
                    p.grad.detach_()
                else:
                    p.grad.requires_grad_(False)
                if p.grad.is_sparse:
                    p.grad.zero_()
                else:
                    to_zero[(p.grad.device, p.grad.dtype)].append(p.grad)
        for grads in to_zero.values():
            torch._foreach_zero_(grads)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Adam update of every parameter that has a gradient.

        Args:
            closure: re-evaluates the model and returns the loss (run with
                gradients enabled before the update).

        Returns:
            the closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        amsgrad = group["amsgrad"]
        calls: dict[tuple[torch.device, torch.dtype], _KernelArguments] = {}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "Adam does not support sparse gradients, please consider "
                    "SparseAdam instead"
                )
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(
                    p, memory_format=torch.preserve_format
                )
                state["exp_avg_sq"] = torch.zeros_like(
                    p, memory_format=torch.preserve_format
                )
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            moments = [state["exp_avg"], state["exp_avg_sq"]]
            if amsgrad:
                moments.append(state["max_exp_avg_sq"])
            tensors = _in_memory_order([p, p.grad, *moments])
            call = calls.setdefault((p.device, p.dtype), _KernelArguments())
            call.params.append(tensors[0])
            call.grads.append(tensors[1])
            call.exp_avgs.append(tensors[2])
            call.exp_avg_sqs.append(tensors[3])
            if amsgrad:
                call.max_exp_avg_sqs.append(tensors[4])
            call.steps.append(state["step"])
        kernel = (
            torch._fused_adamw_
            if group["decoupled_weight_decay"]
            else torch._fused_adam_
        )
        beta1, beta2 = group["betas"]
        for call in calls.values():
            torch._foreach_add_(call.steps, 1)
            kernel(
                call.params,
                call.grads,
                call.exp_avgs,
                call.exp_avg_sqs,
                call.max_exp_avg_sqs,
                call.steps,
                amsgrad=amsgrad,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
                grad_scale=None,
                found_inf=None,
            )

    def state_dict(self) -> dict[str, Any]:
        """The state in torch's format (the state tensors are not copied).

        ``param_groups`` hold the options and the parameters' order indices
        (numbered across groups); ``state`` maps the index of each parameter
        that has been stepped to its state.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        index: dict[int, int] = {}
        groups = []
        start = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for offset, p in enumerate(group["params"]):
                index.setdefault(id(p), start + offset)
            packed["params"] = [index[id(p)] for p in group["params"]]
            start += len(group["params"])
            groups.append(packed)
        state = {
            (index[id(k)] if isinstance(k, torch.Tensor) else k): v
            for k, v in self.state.items()
        }
        state_dict: dict[str, Any] = {"state": state, "param_groups": groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _adopt_saved_options(self, group: dict[str, Any]) -> None:
        """Saved options as this optimiser runs them (torch's Adam's rules)."""
        missing = [k for k in ("lr", "betas", "eps", "weight_decay") if k not in group]
        if missing:
            raise ValueError(
                f"a saved parameter group lacks Adam's options {missing}: the "
                "state dict was not written by Adam/AdamW"
            )
        for name, default in _LATER_OPTIONS.items():
            group.setdefault(name, default)
        # a state dict of torch's non-fused (or capturable) path continues fused
        group.update(_IMPLEMENTATION_OPTIONS)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this class or of torch's Adam/AdamW.

        Group options come from the saved dict (the parameters stay this
        optimiser's); the implementation options are set to the fused path's.
        As in torch, saved tensors already on the parameter's device and of
        its dtype are used, not copied, unless a moment's strides differ from
        the parameter's (it is then copied into the parameter's layout).

        Raises:
            ValueError: if the group count or a group's size differs, or a
                parameter's saved state lacks Adam's moments.
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                "loaded state dict has a different number of parameter groups"
            )
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't "
                    "match the size of optimizer's group"
                )
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            self._adopt_saved_options(saved)
            _check_group_options(saved)
        by_index = dict(
            zip(
                chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                chain.from_iterable(
                    [(p, g) for p in g["params"]] for g in saved_groups
                ),
                strict=True,
            )
        )
        state: defaultdict[Any, Any] = defaultdict(dict)
        for key, saved_state in state_dict["state"].items():
            if key not in by_index:
                state[key] = saved_state  # kept as is, as torch does
                continue
            param, group = by_index[key]
            state[param] = self._loaded_param_state(
                saved_state, param, key=key, amsgrad=group["amsgrad"]
            )
        self.state = state
        self.param_groups = saved_groups
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    @staticmethod
    def _loaded_param_state(
        saved: dict[str, Any], param: torch.Tensor, *, key: Any, amsgrad: bool
    ) -> dict[str, Any]:
        state = {}
        for name, value in saved.items():
            if name == "step":
                state[name] = _loaded_step(value, param)
            elif isinstance(value, torch.Tensor):
                state[name] = _like_parameter(value, param)
            else:
                state[name] = value
        required = ["step", "exp_avg", "exp_avg_sq"]
        if amsgrad:
            required.append("max_exp_avg_sq")
        missing = [name for name in required if name not in state]
        if missing:
            raise ValueError(
                f"the saved optimiser state of parameter {key} lacks {missing}: "
                "it was not written by Adam/AdamW"
                + (" with amsgrad (which keeps max_exp_avg_sq)" if amsgrad else "")
            )
        return state


class FusedAdamW(FusedAdam):
    """``torch.optim.AdamW(fused=True)``: ``FusedAdam`` with decoupled weight decay.

    Same arguments and defaults as torch's AdamW (``weight_decay`` 1e-2); as
    in torch, every group keeps ``decoupled_weight_decay: True``, also when a
    state dict of Adam is loaded.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            decoupled_weight_decay=True,
        )

    def _adopt_saved_options(self, group: dict[str, Any]) -> None:
        super()._adopt_saved_options(group)
        group["decoupled_weight_decay"] = True
