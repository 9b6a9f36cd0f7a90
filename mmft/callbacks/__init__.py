"""Lightning callbacks: training throughput and memory, PEFT export, prediction writing, CPU threads, weight-update
tracking, the spectrum of the updates, forgetting of the source domain."""

from .export import PeftExport
from .forgetting import SourceForgetting
from .predictions import AnswerWriter
from .spectrum import UpdateSpectra
from .threads import CPUThreads
from .throughput import Throughput, peak_memory_gib
from .updates import WeightUpdates

__all__ = ["AnswerWriter", "CPUThreads", "PeftExport", "SourceForgetting", "Throughput", "UpdateSpectra",
           "WeightUpdates", "peak_memory_gib"]
