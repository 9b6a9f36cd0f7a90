"""The parts of scripts/bench_adapters.py (settings, variants, meters, 4-bit and LLaVA runs, report)."""
