"""scripts/compare_runs.py on hand-written CSV logs: which values it picks, the ratios, and bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import load_script

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
    script = load_script("compare_runs")
    summary = script.summarise_run(write_run(tmp_path / "lora_run", "lora", 10.0, (0.4, 0.3)))
    assert summary == {
        "run": "lora_run", "adapter method": "lora", "adapter r": 8, "adapter alpha": 16, "adapter dropout": 0.0,
        "trainable_params": 100, "trainable_percent": 1.5, "train steps": 4,
        "perf/train_samples_per_s": 10.0, "test/average": 0.35, "train/loss (last)": 1.0,
        "updates/slope": -0.25, "val/average (last)": 0.3, "val/average (best)": 0.4,
    }


def test_table_lines_runs_up_with_ratios_to_the_first(tmp_path, capsys):
    script = load_script("compare_runs")
    lora = write_run(tmp_path / "lora", "lora", 10.0, (0.4, 0.3))
    dora = write_run(tmp_path / "dora", "dora", 8.0, (0.45, 0.5))
    out = tmp_path / "comparison.json"
    assert script.main([str(lora), str(dora / "csv" / "version_0"), "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| quantity | lora | " + str(dora / "csv" / "version_0") + " | " + \
        str(dora / "csv" / "version_0") + " / lora |"
    assert "| perf/train_samples_per_s | 10 | 8 | 0.800 |" in table
    assert "| val/average (best) | 0.4 | 0.5 | 1.250 |" in table
    assert "| adapter method | lora | dora |  |" in table
    assert "| test/average | 0.35 | - |  |" in table  # the second run was given as its fit version alone
    assert [s["adapter method"] for s in json.loads(out.read_text())] == ["lora", "dora"]


def test_bad_folders_and_cells_are_named(tmp_path, capsys):
    script = load_script("compare_runs")
    assert script.main([str(tmp_path)]) == 2
    assert f"{tmp_path}: no metrics.csv" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    bad.joinpath("metrics.csv").write_text("epoch,step,train/loss\n0,0,oops\n")
    with pytest.raises(script.RunFolderError, match=r"metrics\.csv:2: not a number"):
        script.summarise_run(bad)
    bad.joinpath("metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n")
    bad.joinpath("hparams.yaml").write_text("- not\n- a mapping\n")
    with pytest.raises(script.RunFolderError, match=r"hparams\.yaml: expected a mapping"):
        script.summarise_run(bad)
