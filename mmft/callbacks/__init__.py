"""Lightning callbacks: training throughput and memory, PEFT export, prediction writing, CPU threads, weight-update
tracking."""

from .export import PeftExport
from .predictions import AnswerWriter
from .threads import CPUThreads
from .throughput import Throughput, peak_memory_gib
from .updates import WeightUpdates

__all__ = ["AnswerWriter", "CPUThreads", "PeftExport", "Throughput", "WeightUpdates", "peak_memory_gib"]
