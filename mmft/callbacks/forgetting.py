"""How much of its source domain a fine-tuned language model forgets ("LoRA Learns Less and Forgets Less",
Biderman et al. 2024): the model's loss on held-out text of the source domain, before training and after every
validation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mmft.errors import InputError
from mmft.models.lm_loss import IGNORE_INDEX, next_token_loss


class SourceTextError(InputError, ValueError):
    """The source-domain text file cannot be read; the message names the file and line."""


def read_source_texts(path: str | Path) -> list[str]:
    """The texts of a JSON Lines file, one ``{"text": ...}`` object a line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise SourceTextError(f"SourceForgetting: {path} does not exist (a JSON Lines file of {{\"text\": ...}} "
                              "records; `mmft sample-data` writes one at source/captions.jsonl)")
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SourceTextError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
            raise SourceTextError(f"{path}:{number}: expected an object with a non-empty string \"text\"")
        texts.append(record["text"])
    if not texts:
        raise SourceTextError(f"{path}: holds no text")
    return texts


class SourceForgetting(Callback):
    """The language model's mean next-token loss on held-out source-domain text (``source``: JSON Lines of
    ``{"text": ...}``), scored before the first training step and after every validation, logged as
    ``source/loss``, ``source/perplexity`` and ``source/forgetting`` (the loss now minus the loss before training: the
    forgetting; the target tasks' ``val/`` scores are the learning). ``mmft compare`` reads both, and ``--plot``
    draws learning against forgetting across runs.

    Each text is tokenized as the model's tokenizer does by default (its BOS included), cut at ``max_length`` tokens,
    and every token after the first is scored; the loss is the mean over all scored tokens of the set. The score
    before training is kept in checkpoints, so a resumed run reports forgetting against the same base.
    """

    def __init__(self, source: str, batch_size: int = 8, max_length: int = 256) -> None:
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"SourceForgetting: batch_size >= 1 and max_length >= 2, got {batch_size}, {max_length}")
        self.source = source
        self.batch_size = batch_size
        self.max_length = max_length
        self.before: float | None = None
        self._ids: list[list[int]] | None = None  # the texts' token ids, read and tokenized once

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            if getattr(pl_module, "tokenizer", None) is None:
                raise ValueError(f"SourceForgetting: {type(pl_module).__name__} has no tokenizer to read the text")
            self._ids = self._token_ids(pl_module.tokenizer)  # a bad file fails now, not after training
            if getattr(getattr(pl_module.model, "config", None), "is_encoder_decoder", False):
                raise ValueError(f"SourceForgetting scores a decoder-only language model's next-token loss; "
                                 f"{type(pl_module).__name__} is an encoder-decoder: remove it from trainer.callbacks")

    def state_dict(self) -> dict[str, Any]:
        return {"before": self.before}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = state_dict["before"]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.before is None:  # a resumed run keeps the score of the base it started from, logged then
            self.before = self.source_loss(pl_module)
            self._log(trainer, self.before)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.before is None:
            return
        self._log(trainer, self.source_loss(pl_module))

    def _log(self, trainer: Trainer, loss: float) -> None:
        metrics = {"source/loss": loss, "source/perplexity": math.exp(min(loss, 50.0)),
                   "source/forgetting": loss - self.before}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _token_ids(self, tokenizer: Any) -> list[list[int]]:
        return [tokenizer(text)["input_ids"][: self.max_length] for text in read_source_texts(self.source)]

    @torch.no_grad()
    def source_loss(self, pl_module: LightningModule) -> float:
        """Mean next-token loss over every scored token of the source text (every rank computes the same)."""
        tokenizer = pl_module.tokenizer
        all_ids = self._ids if self._ids is not None else self._token_ids(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        device = next(p.device for p in pl_module.parameters())
        was_training = pl_module.training
        pl_module.eval()
        total, count = 0.0, 0
        try:
            for start in range(0, len(all_ids), self.batch_size):
                ids = all_ids[start:start + self.batch_size]
                width = max(len(row) for row in ids)
                input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], device=device)
                mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], device=device)
                labels = input_ids.masked_fill(mask == 0, IGNORE_INDEX)
                scored = int((labels[:, 1:] != IGNORE_INDEX).sum())
                loss = next_token_loss(pl_module.model, {"input_ids": input_ids, "attention_mask": mask}, labels,
                                       getattr(pl_module, "sharded", False))
                total += float(loss) * scored
                count += scored
        finally:
            pl_module.train(was_training)
        return total / max(count, 1)
