"""The one base of mmft's input errors: what says the user's configs, data, checkpoint or environment are wrong.

Each such error names the config key, file or record at fault and what to do, so the ``mmft`` command prints its
message alone (``mmft fit: <message>``, exit status 1); any other exception is a bug and keeps its traceback. A new
error of that kind subclasses :class:`InputError` (beside ``ValueError`` or ``RuntimeError``, as callers catch it).
"""

from __future__ import annotations


class InputError(Exception):
    """The user's input is wrong; the message names it and says what to do."""
