"""The tokenizer of the embedded tiny default: a byte-level BPE over the sample data and the prompt templates.

No model hub is reachable, so the tiny LLaVA ships its own tokenizer in ``configs/tiny/tokenizer``. Byte-level BPE
covers any text (no unknown tokens); trained on the sample data's words plus the LLaVA templates, every word of the
sample becomes one token, which keeps sequences short on a CPU. Regenerate it after the sample data changes:

    python -m mmft.tools.tiny_tokenizer --sample-data data/sample --out configs/tiny/tokenizer
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from mmft.models.templates import IMAGE_PLACEHOLDER, VICUNA_V1_SYSTEM
from mmft.tasks import SHORT_ANSWER_SUFFIX

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", IMAGE_PLACEHOLDER)
# the vicuna_v1 text around the data: system prompt, role names after a space and after "</s>", and the instruction
# of the training data's questions (the benchmarks' other instructions are byte-level tokens like any unseen text)
TEMPLATE_TEXTS = (f"{VICUNA_V1_SYSTEM} USER: ASSISTANT:", "USER:", SHORT_ANSWER_SUFFIX)


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sorted(set(texts)), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=2048
    )


def sample_data_texts(root: Path) -> list[str]:
    """Every question, answer, caption and statement of the sample data (read with the project's readers)."""
    from data_modules.formats import GQA, MSRVTTQA, NLVR2, CocoKarpathy, LlavaInstruct, VQAv2

    readers = [
        LlavaInstruct(root / "llava" / "llava_instruct_sample.json", root),
        GQA(root / "gqa" / "train_balanced_questions.json", root / "gqa" / "images"),
        NLVR2(root / "nlvr2" / "train.json", root / "nlvr2" / "images" / "train"),
        CocoKarpathy(root / "coco_karpathy" / "dataset_coco.json", root / "coco", split="train"),
        MSRVTTQA(root / "msrvtt_qa" / "train_qa.json", root / "msrvtt_qa" / "videos"),
    ]
    for split in ("train2014", "val2014"):
        readers.append(
            VQAv2(
                root / "vqav2" / f"v2_OpenEnded_mscoco_{split}_questions.json",
                root / "coco" / split,
                split,
                annotations=root / "vqav2" / f"v2_mscoco_{split}_annotations.json",
            )
        )
    texts = []
    for reader in readers:
        for example in reader.read():
            texts += [turn.text for turn in example.turns] + list(example.references)
    # as the template writes them too: after "ASSISTANT:" a reply starts with a space
    return texts + [" " + text for text in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the tiny default's tokenizer from the sample data.")
    parser.add_argument("--sample-data", type=Path, default=Path("data/sample"))
    parser.add_argument("--out", type=Path, default=Path("configs/tiny/tokenizer"))
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    tokenizer = build_tiny_tokenizer([*TEMPLATE_TEXTS, *sample_data_texts(args.sample_data)], args.vocab_size)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}: {len(tokenizer)} tokens")


if __name__ == "__main__":
    main()
