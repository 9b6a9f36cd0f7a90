"""Every error mmft raises about the user's input derives from ``mmft.errors.InputError``, so the ``mmft`` command
prints its message alone; found by walking the packages, so a new error class cannot be forgotten."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import data_modules
import mmft
from mmft.errors import InputError

# errors that never reach the command as they are: the tools print their own; a collate's rejection is a protocol
# the DataModule handles (the user sees the model's CollateError); a span outside a video is re-raised as the
# MediaError that names the file
NOT_INPUT_ERRORS = {"mmft.tools.export.ExportError", "mmft.tools.optimize.OutputFolderError",
                    "mmft.tools.compare.RunFolderError", "mmft.models.base.ExportError",
                    "data_modules.records.RejectedSamples", "data_modules.media.SpanOutsideVideo"}


def error_classes() -> dict[str, type]:
    found = {}
    for package in (mmft, data_modules):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == info.name:
                    found[f"{info.name}.{name}"] = value
    return found


def test_every_input_error_derives_from_the_one_base():
    classes = error_classes()
    assert len(classes) > 20
    outside = sorted(name for name, cls in classes.items()
                     if not issubclass(cls, InputError) and name not in NOT_INPUT_ERRORS and cls is not InputError)
    assert outside == [], f"derive these from mmft.errors.InputError, or list them in NOT_INPUT_ERRORS: {outside}"
