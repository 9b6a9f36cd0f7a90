"""Compare finished runs side by side (LoRA against DoRA, say) from their CSV logs.

    mmft compare runs/tiny_llava_lora runs/tiny_llava_dora --plot comparison.png
    mmft compare runs/a/csv/version_0 runs/b/csv/version_0 --json comparison.json

A RUN is a CSVLogger version folder (``metrics.csv`` + ``hparams.yaml``) or a folder holding ``csv/version_*``
(the ``default_root_dir`` of mmft's configs), whose versions (the fit, then test runs) are read in order and merged.
Every mmft run logs the same keys (adapter settings, trainable share, ``val/<task>/<metric>``, ``test/...``,
``perf/train_*`` from the Throughput callback, ``updates/*`` from WeightUpdates), so the table lines them up:
one row per quantity, one column per run, and with several runs the ratio of each to the first. W&B shows the same
keys for runs synced there.

``--plot out.png`` draws one row per run: its validation curves per task, and the DoRA paper's figure-2 view of its
weight updates (delta_D against delta_M for every module at every measured step, from the run's
``weight_updates.json``, with the least-squares line and its slope); and, when the runs logged ``source/`` scores
(the SourceForgetting callback) or wrote ``update_spectrum.json`` (UpdateSpectra), a last row with learning (the
target score) against forgetting (the rise of the source-domain loss), one point per run ("LoRA Learns Less and
Forgets Less"'s view), and each module's rank at 90% of its update's energy, one column per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from mmft.analysis import direction_magnitude_trend

UPDATES_FILE = "weight_updates.json"
SPECTRUM_FILE = "update_spectrum.json"


class RunFolderError(ValueError):
    """A RUN argument is not a CSV log folder."""


def version_folders(run: Path) -> list[Path]:
    """The CSVLogger version folders of ``run``, oldest first."""
    if (run / "metrics.csv").is_file():
        return [run]
    versions = sorted((p for p in run.glob("csv/version_*") if (p / "metrics.csv").is_file()),
                      key=lambda p: int(p.name.removeprefix("version_")) if p.name[8:].isdigit() else -1)
    if not versions:
        raise RunFolderError(f"{run}: no metrics.csv here nor under csv/version_*/ (pass a CSVLogger version folder "
                             "or a run's default_root_dir)")
    return versions


def read_metrics(folder: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv``, empty cells dropped, values as floats."""
    path = folder / "metrics.csv"
    with path.open(newline="") as file:
        rows = []
        for line, row in enumerate(csv.DictReader(file), start=2):
            try:
                rows.append({k: float(v) for k, v in row.items() if k is not None and v not in ("", None)})
            except ValueError as error:
                raise RunFolderError(f"{path}:{line}: not a number ({error})") from None
    return rows


def read_hparams(path: Path) -> dict[str, Any]:
    """A version's ``hparams.yaml`` (empty when it has none, as a test-only version may)."""
    if not path.is_file():
        return {}
    hparams = yaml.safe_load(path.read_text()) or {}
    if not isinstance(hparams, dict):
        raise RunFolderError(f"{path}: expected a mapping of hyperparameters, got {type(hparams).__name__}")
    return hparams


def summarise_run(run: Path) -> dict[str, Any]:
    """One run's comparable numbers: adapter settings, last/best metrics, throughput and memory, update trend."""
    label = str(run) if run.name.startswith("version_") else run.name
    summary: dict[str, Any] = {"run": label}
    history: dict[str, list[float]] = {}
    for folder in version_folders(run):
        hparams = read_hparams(folder / "hparams.yaml")
        adapter = hparams.get("adapter") or {}
        for key in ("method", "r", "alpha", "dropout"):
            if key in adapter:
                summary[f"adapter {key}"] = adapter[key]
        for key in ("trainable_params", "trainable_percent"):
            if key in hparams:
                summary[key] = hparams[key]
        for row in read_metrics(folder):
            for key, value in row.items():
                if key not in ("epoch", "step"):
                    history.setdefault(key, []).append(value)
                elif key == "step" and "train/loss" in row:
                    summary["train steps"] = int(value) + 1
    for key in sorted(history):
        values = [v for v in history[key] if not math.isnan(v)]
        if not values:
            continue
        if key == "train/loss":
            summary["train/loss (last)"] = values[-1]
        elif key.startswith("val/"):
            summary[f"{key} (last)"] = values[-1]
            summary[f"{key} (best)"] = min(values) if "loss" in key else max(values)
        elif key.startswith(("test/", "perf/train_", "updates/slope", "updates/correlation")):
            summary[key] = values[-1]
        elif key == "source/loss":
            summary["source/loss (before)"] = values[0]
            summary["source/loss (last)"] = values[-1]
        elif key == "source/forgetting":
            summary["source/forgetting (last)"] = values[-1]
    return summary


def target_score(summary: dict[str, Any], which: str = "last") -> float | None:
    """A run's target score: ``val/average``, or the only ``val/`` score when there is one task (``which``: its
    ``last`` or ``best`` value); None when neither is there."""
    scores = [k for k in summary if k.startswith("val/") and k.endswith(f"({which})") and "loss" not in k]
    key = f"val/average ({which})" if f"val/average ({which})" in summary else (scores[0] if len(scores) == 1 else None)
    return None if key is None else summary[key]


def learning_and_forgetting(summary: dict[str, Any]) -> tuple[float, float] | None:
    """A run's ``(forgetting, learning)``: the source loss's rise (``source/forgetting``, last) and its last target
    score (:func:`target_score`); None without both."""
    forgetting, learning = summary.get("source/forgetting (last)"), target_score(summary)
    if forgetting is None or learning is None:
        return None
    return forgetting, learning


def ratio(value: Any, baseline: Any) -> str:
    if isinstance(value, (int, float)) and isinstance(baseline, (int, float)) and not isinstance(value, bool) \
            and baseline not in (0, None) and not math.isnan(baseline):
        return f"{value / baseline:.3f}"
    return ""


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def comparison_table(summaries: list[dict[str, Any]]) -> str:
    """A markdown table: a row per quantity (in order of first appearance), a column per run, then ratios."""
    keys: list[str] = []
    for summary in summaries:
        keys += [k for k in summary if k != "run" and k not in keys]
    header = ["quantity", *(s["run"] for s in summaries)]
    header += [f"{s['run']} / {summaries[0]['run']}" for s in summaries[1:]]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for key in keys:
        cells = [fmt(s.get(key)) for s in summaries]
        cells += [ratio(s.get(key), summaries[0].get(key)) for s in summaries[1:]]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_folder(run: Path) -> Path:
    """The run folder of a RUN argument (a CSVLogger version folder lies at ``<run>/csv/version_N``)."""
    return run.parent.parent if run.name.startswith("version_") else run


def validation_curves(run: Path) -> dict[str, list[tuple[float, float]]]:
    """``val/<task>/<Metric>`` -> ``(step, value)`` over the run's versions, in logged order."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for folder in version_folders(run):
        for row in read_metrics(folder):
            for key, value in row.items():
                if key.startswith("val/") and key.count("/") == 2 and not math.isnan(value):
                    curves.setdefault(key.removeprefix("val/"), []).append((row.get("step", math.nan), value))
    return curves


def update_points(run: Path) -> tuple[list[tuple[float, float]], float, float]:
    """The ``(delta_D, delta_M)`` points of the run's ``weight_updates.json`` (empty when it has none), with the
    least-squares line's slope and intercept."""
    path = run_folder(run) / UPDATES_FILE
    if not path.is_file():
        return [], math.nan, math.nan
    try:
        points = [(float(p["delta_direction"]), float(p["delta_magnitude"]))
                  for p in json.loads(path.read_text())["points"]]
    except (KeyError, TypeError, ValueError) as error:
        raise RunFolderError(f"{path}: not a weight-update record ({error})") from None
    slope, _ = direction_magnitude_trend(points)
    if math.isnan(slope):
        return points, slope, math.nan
    mean_d = sum(d for d, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    return points, slope, mean_m - slope * mean_d


def spectrum_ranks(run: Path) -> list[int]:
    """Each module's rank at 90% of its update's energy, from the run's ``update_spectrum.json`` (empty without)."""
    path = run_folder(run) / SPECTRUM_FILE
    if not path.is_file():
        return []
    try:
        return [int(module["rank_90"]) for module in json.loads(path.read_text())["modules"].values()]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise RunFolderError(f"{path}: not an update-spectrum record ({error})") from None


def plot_runs(runs: list[Path], out: Path) -> None:
    """Per run: validation curves per task, and delta_D against delta_M with the fitted line (a PNG at ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = [summarise_run(run) for run in runs]
    trade_offs = [(s["run"], learning_and_forgetting(s)) for s in summaries]
    trade_offs = [(label, point) for label, point in trade_offs if point is not None]
    ranks = [(f"{s['run']} ({s.get('adapter method', '?')})", spectrum_ranks(run)) for s, run in zip(summaries, runs)]
    ranks = [(label, values) for label, values in ranks if values]
    rows = len(runs) + (1 if trade_offs or ranks else 0)
    figure, axes = plt.subplots(rows, 2, figsize=(9, 3.2 * rows), squeeze=False)
    if trade_offs or ranks:  # the last row: across runs
        axis = axes[-1][0]
        for label, (forgetting, learning) in trade_offs:  # learning against forgetting, one point per run
            axis.scatter([forgetting], [learning], s=30)
            axis.annotate(label, (forgetting, learning), fontsize="small", xytext=(4, 4), textcoords="offset points")
        axis.set(title="learning against forgetting", xlabel="source/forgetting (source loss rise)",
                 ylabel="target score (val, last)")
        axis = axes[-1][1]
        for index, (label, values) in enumerate(ranks):  # the update's rank at 90% energy, one column per run
            axis.scatter([index] * len(values), values, s=12, alpha=0.6)
        axis.set_xticks(range(len(ranks)), [label for label, _ in ranks], fontsize="small", rotation=15)
        axis.set(title="rank at 90% of the update's energy, per module", ylabel="rank")
    for (curves_axis, updates_axis), run in zip(axes, runs):
        summary = summarise_run(run)
        label = f"{summary['run']} ({summary.get('adapter method', '?')})"
        for task, curve in validation_curves(run).items():
            curves_axis.plot(*zip(*curve), marker="o", markersize=3, label=task)
        curves_axis.set(title=f"{label}: validation", xlabel="step", ylabel="score")
        if curves_axis.lines:
            curves_axis.legend(fontsize="small")
        points, slope, intercept = update_points(run)
        if points:
            d, m = zip(*points)
            updates_axis.scatter(d, m, s=12, alpha=0.7)
            if not math.isnan(slope):
                ends = [min(d), max(d)]
                updates_axis.plot(ends, [intercept + slope * x for x in ends], color="black", linewidth=1,
                                  label=f"slope {slope:.3g}")
                updates_axis.legend(fontsize="small")
        else:
            updates_axis.text(0.5, 0.5, f"no {UPDATES_FILE}", ha="center", va="center",
                              transform=updates_axis.transAxes)
        updates_axis.set(title=f"{label}: weight updates", xlabel="delta_D (direction)",
                         ylabel="delta_M (magnitude)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # renamed into place once written
    figure.savefig(partial, format="png", dpi=80)
    plt.close(figure)
    partial.replace(out)


def main(argv: list[str] | None = None) -> int:
    """``mmft compare``."""
    parser = argparse.ArgumentParser(prog="mmft compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="CSVLogger version folders or run root folders")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the summaries to this JSON file")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="also draw validation curves and delta_D against delta_M per run to this PNG file")
    args = parser.parse_args(argv)
    try:
        summaries = [summarise_run(run) for run in args.runs]
        if args.plot:
            plot_runs(args.runs, args.plot)
    except (RunFolderError, OSError, yaml.YAMLError) as error:
        print(f"mmft compare: {error}", file=sys.stderr)
        return 2
    print(comparison_table(summaries))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1))
    return 0
