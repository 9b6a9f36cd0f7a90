"""Dataset readers: one per public format, each turning files into Example records (see base.py for the policy)."""

from data_modules.formats.base import DataFormatError, OnError, Reader, SkipReport
from data_modules.formats.coco_karpathy import CocoKarpathy
from data_modules.formats.docvqa import DocVQA
from data_modules.formats.gqa import GQA
from data_modules.formats.llava import LlavaInstruct
from data_modules.formats.mmbench import MMBench
from data_modules.formats.msrvtt_qa import MSRVTTQA
from data_modules.formats.nlvr2 import NLVR2
from data_modules.formats.ocrvqa import OCRVQA
from data_modules.formats.pope import POPE
from data_modules.formats.scienceqa import ScienceQA
from data_modules.formats.textvqa import TextVQA
from data_modules.formats.value import TVQA, VideoCaptions
from data_modules.formats.vizwiz import VizWiz
from data_modules.formats.vqav2 import VQAv2

__all__ = [
    "GQA",
    "MSRVTTQA",
    "NLVR2",
    "OCRVQA",
    "POPE",
    "TVQA",
    "CocoKarpathy",
    "DataFormatError",
    "DocVQA",
    "LlavaInstruct",
    "MMBench",
    "OnError",
    "Reader",
    "ScienceQA",
    "SkipReport",
    "TextVQA",
    "VQAv2",
    "VideoCaptions",
    "VizWiz",
]
