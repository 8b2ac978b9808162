"""Reading training checkpoints written by the released ACE (``fme==2026.10.0``).

ACE's ``ckpt.tar``, ``best_ckpt.tar``, ``best_inference_ckpt.tar`` (and its
epoch and EMA checkpoints) are ``torch.save`` dicts::

    {"num_batches_seen", "current_epoch_num_batches_seen", "epoch",
     "best_validation_loss", "best_inference_error",
     "stepper": {"config": {"step": {"type": "single_module", "config": {...}},
                            "input_masking", "derived_forcings"},
                 "dataset_info": {"horizontal_coordinates": {"lat", "lon"},
                                  "vertical_coordinate": {"ak", "bk"},
                                  "timestep" (microseconds), "variable_metadata",
                                  "mask_provider", "all_labels", ...},
                 "step": {"module": {"module.<name>": tensor}, ...}},
     "ema": {"decay", "num_updates", "faster_decay_at_start",
             "module_name_to_ema_name"[, "ema_params"]},
     ["optimization": {...}]}

The only class in the pickle is ACE's ``VariableMetadata`` (a named tuple of
``units`` and ``long_name``), read as :class:`AceVariableMetadata`; torch's
weights-only loader runs no code of ACE's. :func:`convert_ace_checkpoint`
turns the dict into a checkpoint of this project's current format: stepper
config, normalisation statistics (inline, as ACE stores them), grid, vertical
coordinate and variable metadata, network weights and EMA weights. ACE's
optimiser state is not carried over (fine-tune from the checkpoint rather than
resume it). Anything of ACE's stepper that is not supported here is an error
naming the key.
"""

from typing import Any, NamedTuple

import torch

from fme.core.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    ForeignCheckpointFormat,
    register_foreign_format,
)

ACE_NAME = "ACE (fme==2026.10.0)"
_MODULE_PREFIX = "module."
_EMA_PREFIX = "0.module."


class AceVariableMetadata(NamedTuple):
    """Stand-in for ACE's ``fme.core.dataset.data_typing.VariableMetadata``."""

    units: str | None = None
    long_name: str | None = None


_STAND_INS = ((AceVariableMetadata, "fme.core.dataset.data_typing.VariableMetadata"),)

# ACE keys whose value must be this no-op default (anything else is refused).
_STEPPER_NOOPS: dict[str, Any] = {"input_masking": None}
_STEP_NOOPS: dict[str, Any] = {
    "secondary_decoder": None,
    "prescribed_prognostic_names": [],
    "include_channel_mask_inputs": False,
    "global_mean_removal": None,
    "input_dropout": None,
}
_BUILDER_NOOPS: dict[str, Any] = {
    "conditional": False,
    "allow_missing_variables": False,
}
_NORMALIZATION_NOOPS: dict[str, Any] = {
    "fill_nans_on_normalize": False,
    "fill_nans_on_denormalize": False,
}


def is_ace_checkpoint(state: Any) -> bool:
    """Whether ``state`` (a loaded file) looks like an ACE training checkpoint."""
    if not isinstance(state, dict) or "format_version" in state:
        return False
    stepper = state.get("stepper")
    return (
        isinstance(stepper, dict)
        and "num_batches_seen" in state
        and {"config", "dataset_info", "step"} <= set(stepper)
    )


def _pop_noops(config: dict[str, Any], noops: dict[str, Any], path: str) -> None:
    for key, default in noops.items():
        value = config.pop(key, default)
        if value != default and not (default == [] and value is None):
            raise ValueError(
                f"ACE checkpoint: not supported here: {path}.{key}={value!r} "
                f"(only {default!r})"
            )


def _normalization(config: dict[str, Any], path: str) -> dict[str, Any] | None:
    if config is None:
        return None
    config = dict(config)
    _pop_noops(config, _NORMALIZATION_NOOPS, path)
    return {
        "means": {k: float(v) for k, v in config.get("means", {}).items()},
        "stds": {k: float(v) for k, v in config.get("stds", {}).items()},
    }


def _pick(stats: dict[str, dict[str, float]], names: list[str], path: str):
    missing = [n for n in names if n not in stats["means"] or n not in stats["stds"]]
    if missing:
        raise ValueError(f"ACE checkpoint: {path} has no statistics for {missing}")
    return {
        "means": {n: stats["means"][n] for n in names},
        "stds": {n: stats["stds"][n] for n in names},
    }


def _loss_normalizer(
    normalization: dict[str, Any],
    *,
    out_names: list[str],
    prognostic_names: list[str],
) -> dict[str, dict[str, float]]:
    """ACE's loss normaliser: ``loss``, else ``network`` overridden by ``residual``.

    ``residual`` overrides both the means and the stds of the prognostic
    variables, as in ACE.
    """
    if normalization.get("loss") is not None:
        return _pick(normalization["loss"], out_names, "normalization.loss")
    state = _pick(normalization["network"], out_names, "normalization.network")
    residual = normalization.get("residual")
    if residual is not None:
        scaled = [n for n in prognostic_names if n in out_names]
        override = _pick(residual, scaled, "normalization.residual")
        state["means"].update(override["means"])
        state["stds"].update(override["stds"])
    return state


def _corrector(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    config = dict(config)
    if "type" not in config:  # ACE's older form: the atmosphere config itself
        config = {"type": "atmosphere_corrector", "config": config}
    disabled = config.pop("corrector_disabled_epochs", 0)
    if disabled:
        raise ValueError(
            "ACE checkpoint: not supported here: "
            f"stepper.step.config.corrector.corrector_disabled_epochs={disabled}"
        )
    return {"type": config["type"], "config": dict(config.get("config", {}))}


def _dataset_info(info: dict[str, Any]) -> dict[str, Any]:
    labels = info.get("all_labels") or []
    if labels:
        raise ValueError(f"ACE checkpoint: not supported here: labels {labels}")
    masks = (info.get("mask_provider") or {}).get("masks") or {}
    if masks:
        raise ValueError(
            f"ACE checkpoint: not supported here: spatial masks {sorted(masks)}"
        )
    coords = info["horizontal_coordinates"]
    if set(coords) != {"lat", "lon"}:
        raise ValueError(
            "ACE checkpoint: not supported here: horizontal coordinates "
            f"{sorted(coords)} (only lat/lon)"
        )
    vertical = info.get("vertical_coordinate")
    if vertical is not None:
        if set(vertical) != {"ak", "bk"}:
            raise ValueError(
                "ACE checkpoint: not supported here: vertical coordinate "
                f"{sorted(vertical)} (only the hybrid sigma-pressure ak/bk)"
            )
        vertical = {
            "ak": torch.as_tensor(vertical["ak"]).tolist(),
            "bk": torch.as_tensor(vertical["bk"]).tolist(),
        }
    metadata = {}
    for name, value in (info.get("variable_metadata") or {}).items():
        units, long_name = tuple(value)
        metadata[name] = {"units": units or "", "long_name": long_name or ""}
    return {
        "lat": torch.as_tensor(coords["lat"]).tolist(),
        "lon": torch.as_tensor(coords["lon"]).tolist(),
        # ACE stores the timestep in microseconds
        "timestep_seconds": int(info["timestep"]) / 1e6,
        "vertical_coordinate": vertical,
        "variable_metadata": metadata,
    }


def _strip(names: dict[str, torch.Tensor], prefix: str, what: str):
    stray = [k for k in names if not k.startswith(prefix)]
    if stray:
        raise ValueError(
            f"ACE checkpoint: {what} names {stray[:3]} lack the prefix {prefix!r}"
        )
    return {k[len(prefix) :]: v for k, v in names.items()}


def _ema(ema: dict[str, Any] | None) -> dict[str, Any] | None:
    if ema is None:
        return None
    out: dict[str, Any] = {
        "decay": float(ema["decay"]),
        "num_updates": int(ema["num_updates"]),
        "faster_decay_at_start": bool(ema.get("faster_decay_at_start", True)),
    }
    params = ema.get("ema_params")
    if params is not None:
        ema_name_to_module = {v: k for k, v in ema["module_name_to_ema_name"].items()}
        named = {ema_name_to_module[k]: v for k, v in params.items()}
        out["params"] = _strip(named, _EMA_PREFIX, "EMA parameter")
    return out


def _as_ace_loads_them(builder_type: str, module: dict[str, torch.Tensor]):
    """The network weights as the released ACE has them after loading.

    ACE's conditional spectral convolution (``NoiseConditionedSFNO``) rewrites
    a filter weight of its former layout ``(group, in, out, lmax, 2)`` into
    ``(group, lmax, out, in, 2)`` when a state dict is loaded, recognising the
    former layout by its shape alone. When the channels per group equal
    ``lmax`` the two layouts have the same shape and every load transposes
    the weight: what ACE's evaluator and fine-tuning then run with. The same
    is done here, so such a checkpoint predicts here what it predicts in ACE.
    (ACE's EMA weights are copied without that rewrite, and so are ours.)
    """
    if builder_type != "NoiseConditionedSFNO":
        return module
    out = dict(module)
    for name, weight in module.items():
        if (
            name.endswith("filter.filter.weight")
            and weight.dim() == 5
            and weight.shape[1] == weight.shape[2] == weight.shape[3]
        ):
            out[name] = weight.permute(0, 3, 2, 1, 4).contiguous()
    return out


def convert_ace_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """An ACE training checkpoint as a checkpoint of this project's format.

    Raises:
        ValueError: the checkpoint uses an ACE feature not supported here,
            naming the key.
    """
    stepper = state["stepper"]
    config = dict(stepper["config"])
    _pop_noops(config, _STEPPER_NOOPS, "stepper")
    derived = config.pop("derived_forcings", None) or {}
    if any(v is not None for v in derived.values()):
        raise ValueError(
            f"ACE checkpoint: not supported here: stepper.derived_forcings={derived}"
        )
    step = config.pop("step")
    if config:
        raise ValueError(
            f"ACE checkpoint: not supported here: stepper keys {sorted(config)}"
        )
    if step["type"] != "single_module":
        raise ValueError(
            f"ACE checkpoint: not supported here: stepper.step.type={step['type']!r} "
            "(only single_module)"
        )
    step_config = dict(step["config"])
    _pop_noops(step_config, _STEP_NOOPS, "stepper.step.config")
    builder = dict(step_config.pop("builder"))
    _pop_noops(builder, _BUILDER_NOOPS, "stepper.step.config.builder")
    in_names = list(step_config.pop("in_names"))
    out_names = list(step_config.pop("out_names"))
    prognostic = [n for n in out_names if n in in_names]
    all_names = in_names + [n for n in out_names if n not in in_names]
    raw_normalization = step_config.pop("normalization")
    normalization = {
        key: _normalization(raw_normalization.get(key), f"normalization.{key}")
        for key in ("network", "loss", "residual")
    }
    corrector = _corrector(step_config.pop("corrector", None))
    residual_prediction = bool(step_config.pop("residual_prediction", False))
    # ACE keys the step config here takes as they are (checked when it loads)
    carried = {
        key: value
        for key in ("ocean", "next_step_forcing_names")
        if (value := step_config.pop(key, None))
    }
    if step_config:
        raise ValueError(
            "ACE checkpoint: not supported here: stepper.step.config keys "
            f"{sorted(step_config)}"
        )
    network = normalization["network"]
    if network is None:
        raise ValueError(
            "ACE checkpoint: stepper.step.config.normalization has no network"
        )
    our_normalization: dict[str, Any] = {"network": network}
    for key in ("loss", "residual"):
        if normalization[key] is not None:
            our_normalization[key] = normalization[key]
    stepper_config = {
        "step": {
            "type": "single_module",
            "config": {
                "builder": {
                    "type": builder["type"],
                    "config": dict(builder.get("config", {})),
                },
                "in_names": in_names,
                "out_names": out_names,
                "normalization": our_normalization,
                "residual_prediction": residual_prediction,
                "corrector": corrector,
                **carried,
            },
        }
    }
    weights = dict(stepper["step"]["module"])
    _pop_noops(weights, {"label_encoding": None}, "stepper.step.module")
    module = _as_ace_loads_them(
        builder["type"], _strip(weights, _MODULE_PREFIX, "weight")
    )
    converted: dict[str, Any] = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": {},
        "trainable": {
            "stepper": {
                "config": stepper_config,
                "module": module,
                "normalizer": _pick(network, all_names, "normalization.network"),
                "loss_normalizer": _loss_normalizer(
                    normalization, out_names=out_names, prognostic_names=prognostic
                ),
                "dataset_info": _dataset_info(stepper["dataset_info"]),
            },
            "loss_weights": {"t": 0, "terms": {}},
        },
        "trainer": {
            "epoch": int(state.get("epoch", 0)),
            "best_value": float(state.get("best_validation_loss", float("inf"))),
        },
        "converted_from": ACE_NAME,
    }
    ema = _ema(state.get("ema"))
    if ema is not None:
        converted["ema"] = ema
    return converted


ACE_CHECKPOINT_FORMAT = ForeignCheckpointFormat(
    name=ACE_NAME,
    stand_ins=_STAND_INS,
    matches=is_ace_checkpoint,
    convert=convert_ace_checkpoint,
)
register_foreign_format(ACE_CHECKPOINT_FORMAT)
