"""The parts of an image-text-to-text model, found from its own structure rather than a table: the language model
(``get_decoder()``), the vision tower (``get_encoder(modality="image")``) and the projector between them (the other
children of the base model, or the vision tower's ``merger`` where the family keeps it inside: Qwen, GLM).

Their module names are what a recipe writes in ``target_modules`` / ``modules_to_save``; the module logs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mmft.errors import InputError


class ModelPartsError(InputError, ValueError):
    """The model's structure does not show a language model and a vision tower."""


@dataclass(frozen=True)
class ModelParts:
    """Module names (as ``named_modules`` gives them) of a model's language model, vision tower and projectors."""

    language_model: str
    vision_tower: str
    projectors: tuple[str, ...]

    def __str__(self) -> str:
        return (f"language model {self.language_model}, vision tower {self.vision_tower}, "
                f"projector {', '.join(self.projectors) or '(none)'}")


def find_parts(model: nn.Module) -> ModelParts:
    """The parts of ``model`` (a transformers image-text-to-text model)."""
    names = {id(module): name for name, module in model.named_modules()}
    decoder, tower = model.get_decoder(), model.get_encoder(modality="image")
    if id(decoder) not in names or id(tower) not in names or tower is model or decoder is model:
        raise ModelPartsError(f"{type(model).__name__}: get_decoder() / get_encoder(modality='image') do not name a "
                              "language model and a vision tower inside the model")
    language_model, vision_tower = names[id(decoder)], names[id(tower)]
    parent = language_model.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    siblings = dict(model.get_submodule(parent).named_children())
    projectors = [f"{prefix}{name}" for name, child in siblings.items()
                  if child not in (decoder, tower) and any(True for _ in child.parameters())]
    if not projectors:
        projectors = [f"{vision_tower}.{name}" for name, _ in tower.named_children() if "merger" in name]
    return ModelParts(language_model, vision_tower, tuple(projectors))
