"""The `imrseg` command line. Command modules import torch only inside commands,
so `imrseg --help` and shell completion stay fast."""
from __future__ import annotations

import sys

import typer

from ..errors import ImrsegError

app = typer.Typer(
    name="imrseg",
    help="Segment objects from a few example images and a label text (IMR-HSNet + CLIP Grad-CAM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> "typer.Exit":
    """Print a one-line error on stderr and return the exit to raise."""
    typer.echo(f"imrseg: error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def _register() -> None:
    from . import commands  # noqa: F401  (registers the commands on `app`)


def main() -> None:
    _register()
    try:
        app()
    except ImrsegError as exc:
        typer.echo(f"imrseg: error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        typer.echo("imrseg: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
