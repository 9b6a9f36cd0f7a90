"""The named seams between the parts: the Collate protocol the DataModule asks, the one table of tasks, and the
merged export each module writes itself."""

from __future__ import annotations

import pytest
from tiny_vlms import lm_adapter, tiny_backbone

from data_modules import LlavaInstruct, MultitaskDataModule
from data_modules.collate import Collate
from mmft.metrics import CIDErD, ExactMatchAccuracy, GQAAccuracy, VQAAccuracy
from mmft.models import VisionLanguageModule
from mmft.models.base import AdapterModule, ExportError
from mmft.models.export import export_merged
from mmft.tasks import LLAVA_INSTRUCTIONS, SHORT_ANSWER_SUFFIX, TASKS, VLBART_PREFIXES, default_metric, vlbart_metrics


@pytest.fixture(scope="module")
def module() -> VisionLanguageModule:
    return VisionLanguageModule(tiny_backbone("llava"), lm_adapter("llava"))


def test_every_model_collate_is_a_collate_and_a_plain_function_is_not(module):
    from test_vlbart import tiny_module

    assert isinstance(module.collate, Collate) and module.collate.needs_media
    paligemma = VisionLanguageModule(tiny_backbone("paligemma"), lm_adapter("paligemma"))
    assert isinstance(paligemma.collate, Collate)
    assert isinstance(tiny_module("lora").collate, Collate)
    assert not isinstance(lambda samples: {}, Collate)


def test_the_datamodule_asks_a_collate_for_lengths_and_a_plain_function_for_nothing(module, tmp_path):
    import json

    records = [{"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    (tmp_path / "chat.json").write_text(json.dumps(records))
    asked = MultitaskDataModule(train=[LlavaInstruct(tmp_path / "chat.json", task="chat")], collate_fn=module.collate)
    asked.setup("fit")
    assert asked.length_reports["train"]["chat"]["examples"] == 1
    plain = MultitaskDataModule(train=[LlavaInstruct(tmp_path / "chat.json", task="chat")],
                                collate_fn=lambda samples: {"ids": [s.example.id for s in samples]})
    plain.setup("fit")
    assert plain.length_reports == {}


def test_the_task_table_gives_the_collates_their_columns_and_the_modules_their_default_metrics(module):
    assert LLAVA_INSTRUCTIONS["vqav2"] == SHORT_ANSWER_SUFFIX and "nlvr2" not in LLAVA_INSTRUCTIONS
    assert VLBART_PREFIXES == {name: task.vlbart_prefix for name, task in TASKS.items() if task.vlbart_prefix}
    assert VLBART_PREFIXES["vqav2"] == "vqa: " and VLBART_PREFIXES["coco_caption"] == "caption: "
    assert module.collate.instructions == LLAVA_INSTRUCTIONS
    # a task the recipe names no metric for is scored by the table's; the recipe's own wins
    assert type(module._metric_for("gqa")) is GQAAccuracy and type(module._metric_for("coco_caption")) is CIDErD
    assert module._metric_for("my_new_task") is None and default_metric("my_new_task") is None
    named = VisionLanguageModule(tiny_backbone("llava"), lm_adapter("llava"), metrics={"gqa": ExactMatchAccuracy()})
    assert type(named._metric_for("gqa")) is ExactMatchAccuracy
    assert named._metric_for("gqa") is not named._metric_for("gqa")  # a fresh copy per evaluation dataloader
    # VL-BART scores GQA by exact match, as VL-Adapter does; the rest as the table
    assert {k: type(v) for k, v in vlbart_metrics().items()} == {"gqa": ExactMatchAccuracy}
    assert type(default_metric("vqav2")) is VQAAccuracy


def test_an_evaluation_task_with_no_metric_anywhere_is_a_named_error(module):
    batch = {"tasks": ["my_new_task"], "ids": ["1"], "references": [["x"]]}
    with pytest.raises(KeyError, match=r"no metric for task 'my_new_task'.*mmft/tasks\.py"):
        module._score("val", batch, 0)


def test_each_module_writes_its_own_merged_export(module, tmp_path):
    class Bare(AdapterModule):
        pass

    bare = Bare(adapter=lm_adapter("llava"))
    with pytest.raises(ExportError, match="Bare has no merged format"):
        export_merged(bare, tmp_path / "bare")
    assert not (tmp_path / "bare").exists()
    folder = export_merged(module, tmp_path / "merged")
    assert folder == (tmp_path / "merged").resolve()
    assert (folder / "model.safetensors").is_file() and (folder / "mmft_merged.yaml").is_file()
