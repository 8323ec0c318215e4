"""The `imrseg` command line. Command modules import torch only inside commands,
so `imrseg --help` and shell completion stay fast."""
from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

import typer
from typer.core import TyperGroup

from ..errors import ImrsegError, NetworkError, Note, in_terms_of

EXIT_INPUT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130


class _Commands(TyperGroup):
    """Every command's ImrsegError becomes one line on stderr and exit status 2
    (4 for a NetworkError: the arguments may be right and a later try work), the
    parameters it names written as the command's flags."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ImrsegError as exc:
            flags = parameter_flags(self, ctx.invoked_subcommand)
            typer.echo(f"imrseg: error: {in_terms_of(str(exc), flags)}", err=True)
            raise typer.Exit(EXIT_NETWORK if isinstance(exc, NetworkError) else EXIT_USAGE) from None


def parameter_flags(group, command: str | None = None) -> dict[str, str]:
    """The library's parameter names -> how the command line spells them: each option's
    longest flag, an argument's metavar, and `PARAMETER_FLAGS` for the parameters the
    library names otherwise. The command being run (`command`) has the last word."""
    from .options import PARAMETER_FLAGS

    def walk(node, names: dict, own: bool) -> dict:
        if hasattr(node, "commands"):
            for sub in node.commands.values():
                walk(sub, names, own)
        else:
            for p in node.params:
                longs = [o for o in p.opts if o.startswith("--")]
                if longs or own or p.name not in names:  # elsewhere an option's flag beats an argument
                    names[p.name] = max(longs, key=len) if longs else p.name.upper()
        return names

    names = walk(group, dict(PARAMETER_FLAGS), own=False)
    if command in getattr(group, "commands", {}):
        walk(group.commands[command], names, own=True)
    return names


app = typer.Typer(
    cls=_Commands,
    name="imrseg",
    help="Segment objects from a few example images and a label text (IMR-HSNet + CLIP Grad-CAM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _register() -> None:
    from . import commands  # noqa: F401  (registers the commands on `app`)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Notes are one line on stderr, the parameters they name written as flags; other
    warnings as Python shows them."""
    if issubclass(category, Note):
        flags = parameter_flags(typer.main.get_command(app))
        typer.echo(f"imrseg: note: {in_terms_of(str(message), flags)}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def _interrupted(exc: BaseException) -> bool:
    """Whether `exc` came from Ctrl-C: typer turns a KeyboardInterrupt into a silent exit
    130, which keeps the KeyboardInterrupt in its chain of causes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _say_interrupted() -> None:
    # Once: a further Ctrl-C while saying it would end the process with a traceback.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    typer.echo("imrseg: interrupted", err=True)


def main() -> None:
    try:
        _register()
        warnings.showwarning = _show_warning
        # Damaged metadata in users' images is reported per file; Pillow's warnings add nothing.
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        app()
    except KeyboardInterrupt:
        _say_interrupted()
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as exc:
        if _interrupted(exc):
            _say_interrupted()
        raise
    except Exception as exc:
        if os.environ.get("IMRSEG_DEBUG"):
            raise
        typer.echo(f"imrseg: internal error: {type(exc).__name__}: {exc} "
                   "(set IMRSEG_DEBUG=1 to see the traceback)", err=True)
        sys.exit(EXIT_INTERNAL)
