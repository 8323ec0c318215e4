"""`imrseg gallery`: a static page to review an output folder by."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app

EXAMPLES = """Examples:

  imrseg gallery masks/

  imrseg segment --class cat=cats/ --class dog=dogs/ -q photos/ -o masks/ --gallery
"""


@app.command(epilog=EXAMPLES)
def gallery(out: Annotated[Path, typer.Argument(help="An output folder of imrseg segment or zero-shot.")]) -> None:
    """Write OUT/gallery.html: each result's overlay, classes and score, worst first,
    with a filter per class; open it in any browser, no server needed. `segment
    --gallery` writes the same page at the end of a run."""
    from ..errors import InputError, show_path
    from ..guard import OwnedFolder
    from ..outputs.gallery import build_gallery

    if not out.is_dir():
        raise InputError(f"{show_path(out)}: not a folder; give the --out folder of a run")
    # Under the folder's lock (not while a run writes there), never over a file of the user's.
    with OwnedFolder(out, parameter="out", overwrite=None) as folder:
        typer.echo(str(build_gallery(folder)))
