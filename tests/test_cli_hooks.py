"""The LightningCLI internals mmft's CLI relies on: if a Lightning release changes them, this fails first (the
dependency is pinned below the next minor version for the same reason)."""

from __future__ import annotations

import inspect

from lightning.pytorch.cli import LightningCLI

from mmft.cli import MMFTCLI


def test_the_private_hook_the_cli_overrides_is_still_called_by_lightning():
    """MMFTCLI._parse_ckpt_path does nothing, so that a checkpoint's stored hyperparameters never override the run
    config; that only works while LightningCLI calls the hook by that name, without arguments, after parsing."""
    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    source = inspect.getsource(LightningCLI.__init__)
    assert source.index("self.parse_arguments(") < source.index("self._parse_ckpt_path()")
    assert MMFTCLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path
