"""The edge between doit and the bakery's actions: whatever an action raises that the user
can act on ends as a clean task failure, never a traceback."""
from __future__ import annotations

import functools
from typing import Any, Callable

from doit.exceptions import TaskFailed

from sysext_bakery import output
from sysext_bakery.errors import BakeryError
from sysext_bakery.files import DISK_FULL, disk_error


def edge(fn: Callable[..., Any]) -> Callable[..., Any]:
    """doit action wrapper: a BakeryError becomes a clean task failure (no traceback).
    functools.wraps keeps fn's signature visible, so doit still passes task params by name."""
    @functools.wraps(fn)
    def action(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BakeryError as e:
            return TaskFailed(f"error: {e}")
        except BrokenPipeError:   # `doit inspect X | head`: see output.py
            output.closed()
        except OSError as e:
            if e.errno not in DISK_FULL:
                raise
            # a write no narrower edge (files.disk_errors) named: still no traceback
            return TaskFailed(f"error: {disk_error(e, e.filename or 'build/', 'writing')}")
    return action
