"""One error type for bad input, and a wrapper that turns it into one clear line and exit code 2.

Raise `InputError` wherever user-supplied input (a file, a line of it, a params key) is not what
was expected. The message must name the file and line, or the params key, and what was expected:

    raise InputError(f"{path}:{lineno}: expected a JSON object with keys sub, obj, pred; got ...")
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from knowsubnet.core.progress import quiet_library_bars


class InputError(Exception):
    """Bad input from the user: a file, a line of a file, or a params key."""


def cli_entry(main: Callable[..., int | None]) -> Callable[..., None]:
    """Run `main`; on InputError print one line to stderr and exit 2 (no traceback)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        quiet_library_bars()  # progress as log lines in log files: no carriage-return frames
        try:
            code = main(*args, **kwargs)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
            # An input path that is missing or unreadable: name it, no traceback. pyarrow raises these with
            # the path in the message only (no filename, no strerror).
            where = f"{err.filename}: {err.strerror}" if err.filename is not None else str(err)
            print(f"error: {where}", file=sys.stderr)
            sys.exit(2)
        sys.exit(code or 0)

    return wrapper
