"""Running the ``mmft`` console command in a subprocess, as a user does, from a folder laid out like the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_workdir(folder: Path, sample_data: Path, run: dict) -> Path:
    """``folder`` laid out like the repository root (configs/, data/sample/), with ``run`` as short.yaml; runs/ is
    written there."""
    (folder / "configs").symlink_to(ROOT / "configs")
    (folder / "data").mkdir()
    (folder / "data" / "sample").symlink_to(sample_data)
    (folder / "short.yaml").write_text(yaml.safe_dump(run))
    return folder


def run_mmft(workdir: Path, subcommand: str, config: str, *args: str, timeout: int = 400) -> str:
    """``mmft <subcommand> --config <config> --config short.yaml <args>``; fails the test with the output on error."""
    return run_command(workdir, [sys.executable, "-m", "mmft.cli", subcommand, "--config", config, "--config",
                                 "short.yaml", *args], timeout)


def run_command(workdir: Path, command: list[str], timeout: int = 400) -> str:
    """Run ``command`` in ``workdir`` with the repository importable; fails the test with the output on error."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command[2:5]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout + done.stderr
