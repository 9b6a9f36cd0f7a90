"""litdata's ``StreamingDataLoader`` made to resume exactly under Lightning (imported only when streaming: litdata is an
optional dependency)."""

from __future__ import annotations

from typing import Any

from litdata import StreamingDataLoader


class EpochStreamingDataLoader(StreamingDataLoader):
    """litdata's loader, whose epoch after a resumed one starts afresh.

    ``load_state_dict`` makes the next ``iter()`` continue the saved epoch, and litdata clears that flag only when the
    iteration runs out; Lightning stops at the epoch's known length without exhausting it, so the following epoch
    would replay the resumed one (tested: the losses after the resumed epoch differ). Here only the first ``iter()``
    after a load continues the saved epoch.
    """

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self.resuming = True

    def __iter__(self) -> Any:
        if self.restore and not getattr(self, "resuming", False):
            self.restore = False
        self.resuming = False
        return super().__iter__()
