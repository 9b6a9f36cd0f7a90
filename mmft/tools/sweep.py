"""Run one recipe over a grid of methods and settings, one run folder per trial, and tabulate them.

    mmft sweep configs/sweeps/tiny_llava_methods_lr.yaml --out runs/sweep_tiny_llava
    mmft sweep GRID --dry-run              # the trials and their commands, nothing run

GRID is a YAML file:

    recipe: configs/tiny/llava.yaml            # the recipe every trial starts from
    methods: [full, lora, dora]                # each trial composes configs/methods/<method>.yaml
    grid:                                      # config keys (as on the mmft fit command line) -> values
      model.init_args.optimizer.init_args.lr: [2.0e-4, 1.0e-3, 5.0e-3]

Each trial is ``mmft fit`` in a process of its own, in ``<out>/<trial>``; trials run one after another (``--parallel
N`` runs N at a time, each with its own ``CUDA_VISIBLE_DEVICES`` from ``--gpus`` when given). A finished trial writes
``trial.json`` into its folder; a sweep started again skips those, resumes a trial that has a ``last.ckpt`` from it,
and starts the others, so a killed sweep resumes where it stopped.

Several machines: ``--engine optuna --storage URL`` makes the grid an Optuna study (``GridSampler``) in a database
every machine reaches (``sqlite:///...`` on a shared file system, or PostgreSQL / MySQL); start the same command on
each machine (its GPUs by ``--gpus`` / ``--parallel``) and each takes the next grid point no one has taken, into the
shared ``--out`` folder. Optuna's heartbeat marks a trial whose machine died as failed after two minutes and puts
its grid point back (``RetryHeartbeatStaleTrialCallback``); it resumes from its ``last.ckpt``. A trial is claimed by
the worker running it (``.sweep_trial.lock`` in its folder), so a grid point Optuna hands out twice near the end of a
study runs once; a worker ends when the grid is used up, and its table shows the trials still running elsewhere. A
claim left by a machine that died is cleared when a sweep restarts on that machine (or by deleting the file).

``<out>/sweep.md`` and ``<out>/sweep.json`` hold the table: per trial its target score (``val/average``, or the only
``val/`` score), forgetting (``source/forgetting``), the median rank at 90% of the update's energy, speed and peak
memory; and the best trial of each method.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import queue
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmft.errors import InputError
from mmft.files import write_json_atomic, write_text_atomic
from mmft.run_folder import RunFolderLock, RunFolderLocked
from mmft.tools import compare

TRIAL_FILE = "trial.json"
CLAIM_FILE = ".sweep_trial.lock"
METHODS_FOLDER = Path("configs") / "methods"


class SweepError(InputError, ValueError):
    """The grid file cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class Trial:
    """One point of the grid: a method and a value per grid key."""

    method: str
    settings: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        parts = [self.method] + [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in self.settings]
        return re.sub(r"[^A-Za-z0-9_.=-]", "_", "_".join(parts))

    def fit_args(self, recipe: str, folder: Path) -> list[str]:
        args = ["fit", "--config", recipe, "--config", str(METHODS_FOLDER / f"{self.method}.yaml")]
        for key, value in self.settings:
            args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
        return args + ["--trainer.default_root_dir", str(folder)]


def read_grid(path: Path) -> tuple[str, list[Trial]]:
    """The recipe and the trials of a grid file (every method crossed with every combination of values)."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SweepError(f"{path}: cannot read the grid ({error})") from None
    if not isinstance(spec, dict) or set(spec) - {"recipe", "methods", "grid"}:
        raise SweepError(f"{path}: expected a mapping with recipe, methods and grid")
    recipe, methods, grid = spec.get("recipe"), spec.get("methods"), spec.get("grid") or {}
    if not isinstance(recipe, str) or not Path(recipe).is_file():
        raise SweepError(f"{path}: recipe={recipe!r} is not a config file")
    if not isinstance(methods, list) or not methods:
        raise SweepError(f"{path}: methods must be a non-empty list (names of configs/methods/*.yaml)")
    for method in methods:
        if not (METHODS_FOLDER / f"{method}.yaml").is_file():
            known = sorted(p.stem for p in METHODS_FOLDER.glob("*.yaml"))
            raise SweepError(f"{path}: method {method!r} has no {METHODS_FOLDER}/{method}.yaml (known: {known})")
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise SweepError(f"{path}: grid must map config keys to non-empty lists of values")
    keys = sorted(grid)
    trials = [Trial(method, tuple(zip(keys, values)))
              for method in methods for values in itertools.product(*(grid[k] for k in keys))]
    return recipe, trials


def read_record(folder: Path) -> dict[str, Any] | None:
    """The trial's ``trial.json`` (None when it has none yet)."""
    path = folder / TRIAL_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SweepError(f"{path}: not a trial record ({error}); delete it to run the trial again") from None
    if not isinstance(record, dict) or "status" not in record:
        raise SweepError(f"{path}: not a trial record (no status); delete it to run the trial again")
    return record


def trial_state(folder: Path) -> str:
    """``done`` (its trial.json says so), ``resume`` (a last.ckpt to go on from) or ``new``."""
    record = read_record(folder)
    if record is not None and record["status"] == "done":
        return "done"
    return "resume" if (folder / "checkpoints" / "last.ckpt").is_file() else "new"


def run_trial(trial: Trial, recipe: str, out: Path, extra: list[str], gpu: str | None,
              announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit one trial in its own process (resuming it when it has a last.ckpt); record how it ended. A trial another
    sweep worker is running is left to it (``status: running``, nothing written). ``announce`` is called with the
    trial's state: ``done``, or ``new`` / ``resume`` once this worker holds the trial, just before its fit starts."""
    folder = out / trial.name
    if trial_state(folder) == "done":
        if announce is not None:
            announce("done")
        return read_record(folder)
    claim = RunFolderLock(folder)
    claim.path = folder / CLAIM_FILE  # held by the sweep worker from the fit's start to its trial.json
    try:
        claim.acquire()
    except RunFolderLocked:
        return {"trial": trial.name, "method": trial.method, "settings": dict(trial.settings), "status": "running"}
    try:
        return _fit_trial(trial, recipe, folder, extra, gpu, announce)
    finally:
        claim.release()


def _fit_trial(trial: Trial, recipe: str, folder: Path, extra: list[str], gpu: str | None,
               announce: Callable[[str], None] | None) -> dict[str, Any]:
    state = trial_state(folder)
    if state == "done":  # finished by another worker while this one waited for the claim
        return read_record(folder)
    if announce is not None:
        announce(state)
    args = trial.fit_args(recipe, folder) + extra
    if state == "resume":
        args += ["--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
    with open(folder / "sweep_fit.log", "a", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, "-m", "mmft.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                              env=env, check=False).returncode
    record = {"trial": trial.name, "method": trial.method, "settings": dict(trial.settings),
              "status": "done" if code == 0 else "failed", "exit_code": code, "resumed": state == "resume",
              "command": ["mmft", *args]}
    write_json_atomic(folder / TRIAL_FILE, record)
    return record


def trial_row(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """The table row of one trial: its settings and the numbers its run folder logged."""
    row = {"trial": record["trial"], "method": record["method"], **record["settings"], "status": record["status"]}
    folder = out / record["trial"]
    if record["status"] != "done":
        return row
    summary = compare.summarise_run(folder)
    trade_off = compare.learning_and_forgetting(summary)
    target = compare.target_score(summary, "best")
    ranks = sorted(compare.spectrum_ranks(folder))
    row.update({
        "target (best val)": target,
        "forgetting (source loss rise)": trade_off[0] if trade_off else None,
        "rank at 90% (median)": ranks[len(ranks) // 2] if ranks else None,
        "samples/s": summary.get("perf/train_samples_per_s"),
        **{k: v for k, v in summary.items() if k.startswith("perf/train_peak")},
    })
    return row


def best_per_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each method's trial with the highest target score."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        score = row.get("target (best val)")
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        if row["method"] not in best or score > best[row["method"]]["target (best val)"]:
            best[row["method"]] = row
    return best


def markdown(rows: list[dict[str, Any]], best: dict[str, dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(compare.fmt(row.get(c)) for c in columns) + " |" for row in rows]
    lines += ["", "Best trial per method (highest target score):", ""]
    lines += [f"- {method}: {row['trial']} ({compare.fmt(row['target (best val)'])})" for method, row in best.items()]
    return "\n".join(lines) + "\n"


def target_score(trial: Trial, out: Path) -> float:
    """The trial's target score (``target (best val)``), NaN when it has none."""
    record = read_record(out / trial.name)
    if record["status"] != "done":
        raise RuntimeError(f"trial {trial.name} failed (exit code {record['exit_code']}): see its sweep_fit.log")
    score = trial_row(record, out).get("target (best val)")
    return math.nan if score is None else float(score)


def run_with_optuna(trials: list[Trial], run: Any, out: Path, storage: str, study_name: str, slots: int) -> None:
    """Every grid point through an Optuna study shared by all workers (see the module docstring)."""
    try:
        import optuna
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:
        raise SweepError("--engine optuna needs Optuna: pip install 'mmft[sweep]'") from None
    methods = list(dict.fromkeys(t.method for t in trials))
    keys = [key for key, _ in trials[0].settings]
    space = {"method": methods, **{key: list(dict.fromkeys(dict(t.settings)[key] for t in trials)) for key in keys}}
    by_params = {(t.method, *(v for _, v in t.settings)): t for t in trials}
    for attempt in range(5):  # workers started together race to create the database's tables: the losers retry
        try:
            # SQLite: writers wait for each other's locks (30 s) instead of failing at once
            engine = {"connect_args": {"timeout": 30}} if storage.startswith("sqlite") else None
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna, and has been since 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                database = RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=30, grace_period=120,
                                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
            study = optuna.create_study(study_name=study_name, storage=database, direction="maximize",
                                        load_if_exists=True, sampler=optuna.samplers.GridSampler(space, seed=0))
            break
        except SQLAlchemyError:  # a table, schema version or study another worker created at the same moment
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))

    def objective(optuna_trial: Any) -> float:
        params = tuple(optuna_trial.suggest_categorical(name, choices) for name, choices in space.items())
        trial = by_params[params]
        if run((trials.index(trial), trial))["status"] == "running":  # a duplicate of a grid point in progress
            raise optuna.TrialPruned(f"{trial.name} is running in another worker")
        return target_score(trial, out)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_jobs=slots, catch=(RuntimeError,))


def main(argv: list[str] | None = None) -> int:
    """``mmft sweep``."""
    parser = argparse.ArgumentParser(prog="mmft sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="the grid file (YAML: recipe, methods, grid)")
    parser.add_argument("--out", type=Path, help="the sweep's folder (default: runs/sweep_<grid file name>)")
    parser.add_argument("--parallel", type=int, default=1, help="trials run at once (default: 1)")
    parser.add_argument("--gpus", help="comma-separated CUDA devices, one per parallel slot (e.g. 0,1,2,3)")
    parser.add_argument("--dry-run", action="store_true", help="print the trials and their commands, run nothing")
    parser.add_argument("--engine", choices=["local", "optuna"], default="local",
                        help="local: this machine runs the grid; optuna: workers on several machines share it")
    parser.add_argument("--storage", help="with --engine optuna: the study's database URL (e.g. sqlite:///sweep.db)")
    parser.add_argument("--study", help="with --engine optuna: the study's name (default: the --out folder's name)")
    parser.epilog = "Arguments after -- go to every trial's mmft fit (e.g. -- --trainer.max_epochs 2)."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.engine == "optuna" and not args.storage:
        print("mmft sweep: --engine optuna needs --storage (a database URL every worker reaches)", file=sys.stderr)
        return 2
    try:
        return sweep(args, extra)
    except (SweepError, compare.RunFolderError) as error:  # the grid, a trial record or a trial's logs
        print(f"mmft sweep: {error}", file=sys.stderr)
        return 2


def sweep(args: argparse.Namespace, extra: list[str]) -> int:
    """Run (or, with ``--dry-run``, list) the grid's trials and write the table; the exit code."""
    recipe, trials = read_grid(args.grid)
    out = args.out or Path("runs") / f"sweep_{args.grid.stem}"
    if args.dry_run:
        for trial in trials:
            state = trial_state(out / trial.name)
            print(f"{trial.name} [{state}]: mmft {' '.join(trial.fit_args(recipe, out / trial.name) + extra)}")
        return 0
    slots = max(1, args.parallel)
    devices = args.gpus.split(",") if args.gpus else [None]
    free_gpus: queue.Queue[str | None] = queue.Queue()
    for slot in range(slots):  # a running trial holds its device until it ends
        free_gpus.put(devices[slot % len(devices)])

    def run(index_trial: tuple[int, Trial]) -> dict[str, Any]:
        index, trial = index_trial
        gpu = free_gpus.get()
        try:
            def announce(state: str) -> None:  # once this worker holds the trial: never for one another runs
                print(f"mmft sweep: trial {index + 1}/{len(trials)} {trial.name} ({state})"
                      + (f" on CUDA device {gpu}" if gpu is not None else ""), flush=True)

            return run_trial(trial, recipe, out, extra, gpu, announce)
        finally:
            free_gpus.put(gpu)

    if args.engine == "optuna":
        run_with_optuna(trials, run, out, args.storage, args.study or out.name, slots)
        records = [read_record(out / t.name)
                   or {"trial": t.name, "method": t.method, "settings": dict(t.settings), "status": "running"}
                   for t in trials]
    else:
        with ThreadPoolExecutor(max_workers=slots) as pool:
            records = list(pool.map(run, enumerate(trials)))
    rows = [trial_row(record, out) for record in records]
    best = best_per_method(rows)
    table = markdown(rows, best)
    write_text_atomic(out / "sweep.md", table)
    write_json_atomic(out / "sweep.json", {"recipe": recipe, "trials": rows, "best": best})
    print(table)
    failed = [r["trial"] for r in records if r["status"] == "failed"]
    if failed:
        print(f"mmft sweep: {len(failed)} trial(s) failed: {failed} (see their sweep_fit.log)", file=sys.stderr)
    return 1 if failed else 0
