"""How the ``meanet`` commands read a user's input and end on a mistake: ``error: ...`` on stderr and exit code 2,
never a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


class EchoHandler(logging.Handler):
    """The library's warnings (``meanet.*`` loggers) as ``warning: ...`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.secho(f"{record.levelname.lower()}: {record.getMessage()}", fg=typer.colors.YELLOW, err=True)


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose user-facing errors end as ``error: ...`` and exit code 2, never as a traceback.

    The project raises ValueError (ConfigError, CheckpointError, BadImageError, ...) and OSError (FileNotFoundError,
    PermissionError, ...) with messages that say what was expected, what was found and the fix.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        logger = logging.getLogger("meanet")
        if not any(isinstance(h, EchoHandler) for h in logger.handlers):
            logger.addHandler(EchoHandler(logging.WARNING))
        try:
            return command(*args, **kwargs)
        except OSError as e:
            if e.filename and e.strerror:  # from the system: "PATH: No such file or directory"
                fail(f"{e.filename}: {e.strerror}")
            fail(str(e) or type(e).__name__)
        except ValueError as e:
            fail(str(e) or type(e).__name__)

    return run


def comma_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        fail(f"--{what} takes a comma-separated list; got {value!r}")
    return items
