"""mmft compare (mmft.tools.compare) on hand-written CSV logs: which values it picks, the ratios, and bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmft.tools import compare

COLUMNS = "epoch,step,train/loss,val/average,perf/train_samples_per_s,updates/slope\n"


def write_run(root: Path, method: str, samples_per_s: float, val: tuple[float, float]) -> Path:
    """A fit (version_0: 4 steps, two validations, a throughput summary) and a test (version_1)."""
    fit = root / "csv" / "version_0"
    fit.mkdir(parents=True)
    fit.joinpath("hparams.yaml").write_text(yaml.safe_dump(
        {"adapter": {"method": method, "r": 8, "alpha": 16, "dropout": 0.0}, "trainable_params": 100,
         "trainable_percent": 1.5}))
    fit.joinpath("metrics.csv").write_text(
        COLUMNS + "0,0,2.0,,,\n0,1,1.5,,,\n0,1,,%s,,-0.5\n1,3,1.0,,,\n1,3,,%s,,-0.25\n1,3,,,%s,\n"
        % (val[0], val[1], samples_per_s))
    test = root / "csv" / "version_1"
    test.mkdir(parents=True)
    test.joinpath("metrics.csv").write_text("epoch,step,test/average\n0,0,0.35\n")
    return root


def test_summary_takes_last_and_best_values_and_merges_versions(tmp_path):
    summary = compare.summarise_run(write_run(tmp_path / "lora_run", "lora", 10.0, (0.4, 0.3)))
    assert summary == {
        "run": "lora_run", "adapter method": "lora", "adapter r": 8, "adapter alpha": 16, "adapter dropout": 0.0,
        "trainable_params": 100, "trainable_percent": 1.5, "train steps": 4,
        "perf/train_samples_per_s": 10.0, "test/average": 0.35, "train/loss (last)": 1.0,
        "updates/slope": -0.25, "val/average (last)": 0.3, "val/average (best)": 0.4,
    }


def test_table_lines_runs_up_with_ratios_to_the_first(tmp_path, capsys):
    lora = write_run(tmp_path / "lora", "lora", 10.0, (0.4, 0.3))
    dora = write_run(tmp_path / "dora", "dora", 8.0, (0.45, 0.5))
    out = tmp_path / "comparison.json"
    assert compare.main([str(lora), str(dora / "csv" / "version_0"), "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| quantity | lora | " + str(dora / "csv" / "version_0") + " | " + \
        str(dora / "csv" / "version_0") + " / lora |"
    assert "| perf/train_samples_per_s | 10 | 8 | 0.800 |" in table
    assert "| val/average (best) | 0.4 | 0.5 | 1.250 |" in table
    assert "| adapter method | lora | dora |  |" in table
    assert "| test/average | 0.35 | - |  |" in table  # the second run was given as its fit version alone
    assert [s["adapter method"] for s in json.loads(out.read_text())] == ["lora", "dora"]


def test_bad_folders_and_cells_are_named(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 2
    assert f"{tmp_path}: no metrics.csv" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    bad.joinpath("metrics.csv").write_text("epoch,step,train/loss\n0,0,oops\n")
    with pytest.raises(compare.RunFolderError, match=r"metrics\.csv:2: not a number"):
        compare.summarise_run(bad)
    bad.joinpath("metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n")
    bad.joinpath("hparams.yaml").write_text("- not\n- a mapping\n")
    with pytest.raises(compare.RunFolderError, match=r"hparams\.yaml: expected a mapping"):
        compare.summarise_run(bad)


def write_updates(run: Path, points: list[tuple[float, float]]) -> None:
    """A weight_updates.json in the run folder, one module measured at successive steps."""
    run.joinpath("weight_updates.json").write_text(json.dumps({"points": [
        {"step": step, "module": "q_proj", "delta_direction": d, "delta_magnitude": m}
        for step, (d, m) in enumerate(points)]}))


def test_plot_data_curves_per_task_and_the_fitted_update_line(tmp_path):
    run = tmp_path / "run"
    fit = run / "csv" / "version_0"
    fit.mkdir(parents=True)
    fit.joinpath("metrics.csv").write_text(
        "epoch,step,train/loss,val/vqav2/VQAAccuracy,val/gqa/ExactMatchAccuracy,val/average\n"
        "0,1,2.0,,,\n0,1,,0.25,0.5,0.375\n1,3,,0.5,0.25,0.375\n")
    assert compare.validation_curves(run) == {"vqav2/VQAAccuracy": [(1.0, 0.25), (3.0, 0.5)],
                                             "gqa/ExactMatchAccuracy": [(1.0, 0.5), (3.0, 0.25)]}
    # by hand: mean D 0.2, mean M 1.2667; cov 0.06, var 0.02 -> slope 3, intercept 1.2667 - 0.6 = 0.6667
    write_updates(run, [(0.1, 1.0), (0.2, 1.2), (0.3, 1.6)])
    points, slope, intercept = compare.update_points(fit)  # a version folder finds its run's record
    assert points == [(0.1, 1.0), (0.2, 1.2), (0.3, 1.6)]
    assert slope == pytest.approx(3.0) and intercept == pytest.approx(2 / 3)


def test_plot_writes_a_png_per_run(tmp_path, capsys):
    lora = write_run(tmp_path / "lora", "lora", 10.0, (0.4, 0.3))
    dora = write_run(tmp_path / "dora", "dora", 8.0, (0.45, 0.5))
    write_updates(dora, [(0.1, 1.0), (0.2, 0.9), (0.3, 0.85)])  # the LoRA run has no record: its panel says so
    out = tmp_path / "plots" / "comparison.png"
    assert compare.main([str(lora), str(dora), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(out.parent.glob("*.partial"))
    bad = tmp_path / "bad"
    write_run(bad, "dora", 8.0, (0.45, 0.5)).joinpath("weight_updates.json").write_text('{"points": [{"step": 1}]}')
    assert compare.main([str(bad), "--plot", str(out)]) == 2
    assert "weight_updates.json: not a weight-update record" in capsys.readouterr().err


def test_learning_forgetting_and_spectrum_ranks_are_read_from_each_run(tmp_path, capsys):
    """The source loss before training and last, its rise (the forgetting) beside the target score (the learning),
    and each module's rank at 90% energy: what the last plot row draws across runs."""
    full = write_run(tmp_path / "full", "full", 5.0, (0.5, 0.6))
    # SourceForgetting's rows: before the first step, then after each validation
    full.joinpath("csv", "version_0", "metrics.csv").write_text(
        "epoch,step,train/loss,val/average,source/loss,source/forgetting\n"
        "0,0,,,2.0,0.0\n0,1,1.5,,,\n0,1,,0.5,2.25,0.25\n1,3,,0.6,2.5,0.5\n")
    summary = compare.summarise_run(full)
    assert (summary["source/loss (before)"], summary["source/loss (last)"]) == (2.0, 2.5)
    assert compare.learning_and_forgetting(summary) == (0.5, 0.6)
    assert (compare.target_score(summary, "best"), compare.target_score(summary, "last")) == (0.6, 0.6)
    lora = write_run(tmp_path / "lora", "lora", 10.0, (0.4, 0.3))
    assert compare.learning_and_forgetting(compare.summarise_run(lora)) is None  # no source scores logged
    full.joinpath("update_spectrum.json").write_text(json.dumps({"modules": {"q": {"rank_90": 30},
                                                                             "v": {"rank_90": 12}}}))
    assert compare.spectrum_ranks(full) == [30, 12] and compare.spectrum_ranks(lora) == []
    out = tmp_path / "comparison.png"
    assert compare.main([str(lora), str(full), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lora.joinpath("update_spectrum.json").write_text('{"modules": {"q": {}}}')
    assert compare.main([str(lora), "--plot", str(out)]) == 2
    assert "update_spectrum.json: not an update-spectrum record" in capsys.readouterr().err
