"""The multitask DataModule's settings, checked when it is built (every error names its key), and what it asks of
the model's collate: frames per video, media, packing."""

from __future__ import annotations

from typing import Any, Literal

from data_modules.collate import Collate, Packs
from data_modules.media import FrameSampling, frame_sampling_for
from data_modules.streaming import StreamingShards
from mmft.errors import InputError

EvalStage = Literal["val", "test", "predict"]
EVAL_STAGES: tuple[EvalStage, ...] = ("val", "test", "predict")


class DataConfigError(InputError, ValueError):
    """The DataModule's arguments do not fit together; the message names the argument (as in the CLI config)."""


class SettingsChecks:
    """The settings checks of :class:`~data_modules.multitask.MultitaskDataModule` (whose attributes they read)."""

    @property
    def frame_sampling(self) -> FrameSampling:
        """How videos are sampled: ``num_frames`` (or ``video_fps`` + ``max_frames``), or the count a collate fixes
        (:attr:`Collate.video_frames`), so the model and the data cannot disagree."""
        collate = self._model_collate
        try:
            return frame_sampling_for(self.num_frames, self.video_fps, self.max_frames,
                                      collate.video_frames if collate is not None else None)
        except ValueError as error:
            raise DataConfigError(f"data.num_frames / data.video_fps / data.max_frames: {error}") from None

    def _frame_options(self) -> dict[str, Any]:
        sampling = self.frame_sampling
        return {"num_frames": sampling.num_frames, "video_fps": sampling.fps, "max_frames": sampling.max_frames}

    def _check_arguments(self) -> None:
        self._check_streaming()
        self._check_packing()
        self.frame_sampling  # noqa: B018 (checks the frame settings now, with the collate given)
        if self.sampling not in ("round_robin", "proportional", "concat"):
            raise DataConfigError(f"data.sampling must be round_robin, proportional or concat, not {self.sampling!r}")
        if self.on_error not in ("raise", "skip"):
            raise DataConfigError(f"data.on_error must be 'raise' or 'skip', not {self.on_error!r}")
        if isinstance(self.batch_size, dict):
            if self.sampling == "concat":
                raise DataConfigError("data.batch_size must be one int with sampling: concat (batches mix tasks)")
            needed = {("data.batch_size", task) for task in self.train_tasks}
            if self.eval_batch_size is None:
                needed |= {("data.batch_size or data.eval_batch_size", r.task) for s in EVAL_STAGES for r in self.readers[s]}
            for argument, task in sorted(needed):
                if task not in self.batch_size:
                    raise DataConfigError(
                        f"{argument} has no entry for task {task!r} (it has {sorted(self.batch_size)})"
                    )
        sizes = list(self.batch_size.values()) if isinstance(self.batch_size, dict) else [self.batch_size]
        if self.eval_batch_size is not None:
            sizes.append(self.eval_batch_size)
        if any(size < 1 for size in sizes):
            raise DataConfigError(
                f"batch sizes must be positive: data.batch_size={self.batch_size}, "
                f"data.eval_batch_size={self.eval_batch_size}"
            )

    def _check_packing(self) -> None:
        if not self.packing:
            if self.max_tokens is not None:
                raise DataConfigError("data.max_tokens is the length of packed rows: set data.packing: true too")
            return
        if self.max_tokens is None or self.max_tokens < 1:
            raise DataConfigError(f"data.packing needs data.max_tokens, the tokens of a packed row (a positive "
                                  f"number, got {self.max_tokens})")
        if self.group_by_modality_length:
            raise DataConfigError("data.packing fills batches by length itself: leave data.group_by_modality_length "
                                  "off")
        if any(isinstance(r, StreamingShards) for r in self.readers["train"]):
            raise DataConfigError("data.packing reads the training examples' lengths from the model's collate when "
                                  "it reads them: it takes in-memory readers, not StreamingShards")
        if self.collate_fn is not None:
            self._packing_collate().check_packing()

    def _packing_collate(self) -> Packs:
        collate = self._model_collate
        if not isinstance(collate, Packs):
            raise DataConfigError(f"data.packing: the model's collate ({type(self.collate_fn).__name__}) cannot pack "
                                  "batches (VL-BART's encoder-decoder batches are not packed): set data.packing: false")
        return collate

    def _check_streaming(self) -> None:
        for split in EVAL_STAGES:
            if any(isinstance(r, StreamingShards) for r in self.readers[split]):
                raise DataConfigError(f"data.{split}: StreamingShards readers serve training only; evaluate with "
                                      "the in-memory readers of the dataset files")

    @property
    def _model_collate(self) -> Collate | None:
        """The collate as a :class:`Collate`, or None for a plain callable (no length checks, media decoded)."""
        return self.collate_fn if isinstance(self.collate_fn, Collate) else None

    @property
    def _needs_media(self) -> bool:
        """False when the model's collate reads pre-extracted features: images are then neither checked nor
        decoded."""
        collate = self._model_collate
        return collate.needs_media if collate is not None else True
