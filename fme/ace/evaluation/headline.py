"""The evaluator's closing headline table: RMSE at a few leads, and drift."""

import datetime

from fme.ace.evaluation.metrics import RolloutMetricsAggregator


def _lead_label(lead: int, timestep: datetime.timedelta) -> str:
    hours = lead * timestep.total_seconds() / 3600
    if hours >= 48 and hours % 24 == 0:
        return f"{int(hours // 24)}d"
    return f"{hours:g}h"


def headline_leads(n_leads: int) -> list[int]:
    """Up to four leads: 1, about a quarter, half, and the last."""
    return sorted({1, max(1, n_leads // 4), max(1, n_leads // 2), n_leads})


def headline_table(
    metrics: dict[str, float],
    aggregator: RolloutMetricsAggregator,
    timestep: datetime.timedelta,
) -> str:
    """A plain-text table of RMSE per variable at a few leads, then the drifts."""
    leads = headline_leads(aggregator.n_lead_times)
    header = ["variable"] + [f"RMSE {_lead_label(k, timestep)}" for k in leads]
    rows = [header]
    for name in aggregator.names:
        row = [name]
        for k in leads:
            value = metrics.get(f"rmse/{name}/lead_{k}")
            row.append("-" if value is None else f"{value:.4g}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    drifts = [
        f"  {name}: {metrics[f'global_mean_drift/{name}']:+.4g} "
        f"(data: {metrics.get(f'target_global_mean_drift/{name}', float('nan')):+.4g})"
        for name in aggregator.conserved_names
        if f"global_mean_drift/{name}" in metrics
    ]
    if drifts:
        last = _lead_label(aggregator.n_lead_times, timestep)
        lines += ["", f"global-mean drift after {last} (prediction vs data):", *drifts]
    return "\n".join(lines)
