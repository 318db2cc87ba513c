"""The one place the project's errors become kopf's two kinds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import kopf

from voicetrack.errors import InvalidInputError, TemporaryFailure


@contextmanager
def kopf_errors() -> Iterator[None]:
    """Input errors are permanent (retrying cannot help); infrastructure errors and
    steps under way are temporary, retried after their `delay`."""
    try:
        yield
    except InvalidInputError as err:
        raise kopf.PermanentError(str(err)) from err
    except TemporaryFailure as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from err
