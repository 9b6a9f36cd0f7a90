"""Lightning callbacks: training throughput and memory, PEFT export, prediction writing, CPU threads."""

from .export import PeftExport
from .predictions import AnswerWriter
from .threads import CPUThreads
from .throughput import Throughput, peak_memory_gib

__all__ = ["AnswerWriter", "CPUThreads", "PeftExport", "Throughput", "peak_memory_gib"]
