"""Shared fixtures. ``sample_data``: the synthetic sample data, generated once per test session."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from mmft.tools.sample_data import make_sample_data

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """The benchmark ``scripts/<name>.py`` as a module (scripts/ holds benchmarks, not a package), loaded once; its
    parts (``scripts/bench_parts``) import as when the script runs, from the script's folder."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up in sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_benchmark() -> types.SimpleNamespace:
    """``scripts/bench_adapters.py`` with the names of its parts (``scripts/bench_parts/*``) in one namespace, as the
    benchmark tests read them."""
    script = load_script("bench_adapters")
    names: dict = {}
    for part in ("settings", "variants", "meters", "quant", "report"):
        names.update(vars(importlib.import_module(f"bench_parts.{part}")))
    return types.SimpleNamespace(**{**names, **vars(script)})


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the whole suite: tiny matrices gain nothing from threads, and threads competing with
    other processes (pytest-xdist workers, DDP tests) make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder of the sample data (the layout of data/sample/, see its README.txt), made in about a second."""
    root = tmp_path_factory.mktemp("sample_data")
    make_sample_data(root)
    return root
