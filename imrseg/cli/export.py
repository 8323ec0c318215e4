"""`imrseg export`: the annotations of a finished output folder, without a model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import app
from .options import CocoOption, CocoPolygonsOption, MinAreaOption

EXAMPLES = """Examples:

  imrseg export masks/ --coco

  imrseg export masks/ --coco --coco-polygons --min-area 50
"""


@app.command(epilog=EXAMPLES)
def export(
    out: Annotated[Path, typer.Argument(help="An output folder of imrseg segment or zero-shot.")],
    coco: CocoOption = False, coco_polygons: CocoPolygonsOption = False, min_area: MinAreaOption = 0,
) -> None:
    """Export a finished output folder's masks as dataset annotations (COCO), as
    `segment --coco` does at the end of a run."""
    from ..errors import InputError, show_path
    from ..guard import OwnedFolder
    from ..outputs.coco import export_coco

    if not coco:
        raise InputError("nothing to export: pass --coco")
    if min_area < 0:
        raise InputError(f"--min-area must be 0 or more, not {min_area}")
    if not out.is_dir():
        raise InputError(f"{show_path(out)}: not a folder; give the --out folder of a run")
    # Under the folder's lock (not while a run writes there), never over a file of the user's.
    with OwnedFolder(out, parameter="out", overwrite=None) as folder:
        typer.echo(str(export_coco(folder, min_area, coco_polygons)))
