"""ACE's ``data_writer``: which rollout files to write, and the writers that do it."""

import dataclasses
import datetime
from pathlib import Path

import numpy as np
import torch

from fme.ace.evaluation.monthly import MONTHLY_FILENAME, MonthlyMeanWriter
from fme.ace.evaluation.writer import PredictionWriter
from fme.ace.inference.rollout import RolloutChunk


@dataclasses.dataclass
class DataWriterConfig:
    """ACE's ``data_writer``.

    Attributes:
        save_prediction_files: write ``autoregressive_predictions.nc`` (and,
            when evaluating against data, ``autoregressive_target.nc``).
        save_monthly_files: write ``monthly_mean_predictions.nc``.
        save_step_diagnostics: not supported here (must be false).
        names: variables to write (null: every predicted variable).
        time_coarsen: not supported here (must be null).
        files: not supported here (must be null).
    """

    save_prediction_files: bool = True
    save_monthly_files: bool = True
    save_step_diagnostics: bool = False
    names: list[str] | None = None
    time_coarsen: dict | None = None
    files: list[dict] | None = None

    def __post_init__(self):
        if self.save_step_diagnostics:
            raise ValueError("not supported here: data_writer.save_step_diagnostics")
        for key in ("time_coarsen", "files"):
            if getattr(self, key) is not None:
                raise ValueError(f"not supported here: data_writer.{key}")

    def selected_names(self, out_names: list[str]) -> list[str]:
        """The variables to write, checked against the predicted ones."""
        if self.names is None:
            return list(out_names)
        unknown = [n for n in self.names if n not in out_names]
        if unknown:
            raise ValueError(
                f"data_writer.names {unknown} are not predicted; allowed: {out_names}"
            )
        return list(self.names)


class RolloutWriters:
    """The files ``DataWriterConfig`` asks for, fed chunk by chunk (root rank).

    Args:
        config: which files to write.
        experiment_dir: where they go.
        out_names: predicted variables.
        lat: ``[lat]`` latitudes.
        lon: ``[lon]`` longitudes.
        init_times: ``[n_samples]`` ``datetime64`` initialisation times.
        n_forward_steps: rollout length.
        timestep: time between steps.
        variable_metadata: units and long names.
        with_target: also write ``autoregressive_target.nc``.
    """

    def __init__(
        self,
        *,
        config: DataWriterConfig,
        experiment_dir: Path,
        out_names: list[str],
        lat: torch.Tensor,
        lon: torch.Tensor,
        init_times: np.ndarray,
        n_forward_steps: int,
        timestep: datetime.timedelta,
        variable_metadata: dict[str, dict[str, str]],
        with_target: bool,
    ):
        self._names = config.selected_names(out_names)
        self._predictions: PredictionWriter | None = None
        self._monthly: MonthlyMeanWriter | None = None
        if config.save_prediction_files:
            self._predictions = PredictionWriter(
                experiment_dir=experiment_dir,
                names=self._names,
                lat=lat,
                lon=lon,
                n_samples=len(init_times),
                n_leads=n_forward_steps,
                timestep=timestep,
                variable_metadata=variable_metadata,
                save_target=with_target,
            )
            self._predictions.set_init_times(0, init_times)
        if config.save_monthly_files:
            self._monthly = MonthlyMeanWriter(
                path=experiment_dir / MONTHLY_FILENAME,
                names=self._names,
                lat=lat,
                lon=lon,
                init_times=init_times,
                timestep=timestep,
                variable_metadata=variable_metadata,
            )

    def append(self, chunk: RolloutChunk) -> None:
        """Write one chunk of every sample."""
        prediction = {n: chunk.prediction[n] for n in self._names}
        if self._predictions is not None:
            target = {n: chunk.data[n] for n in self._names if n in chunk.data}
            self._predictions.append(
                sample_start=0,
                lead_start=chunk.lead_start,
                prediction=prediction,
                target=target if len(target) == len(self._names) else prediction,
            )
        if self._monthly is not None:
            self._monthly.append(sample_start=0, prediction=prediction, time=chunk.time)

    def close(self) -> None:
        """Finish every file."""
        if self._predictions is not None:
            self._predictions.close()
        if self._monthly is not None:
            self._monthly.close()
