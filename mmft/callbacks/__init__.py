"""Lightning callbacks: training throughput and memory, PEFT export, prediction writing, CPU threads, weight-update
tracking, the spectrum of the updates."""

from .export import PeftExport
from .predictions import AnswerWriter
from .spectrum import UpdateSpectra
from .threads import CPUThreads
from .throughput import Throughput, peak_memory_gib
from .updates import WeightUpdates

__all__ = ["AnswerWriter", "CPUThreads", "PeftExport", "Throughput", "UpdateSpectra", "WeightUpdates",
           "peak_memory_gib"]
