"""`imrseg weights`: the registry of checkpoints, downloads, importing the authors'
files and publishing them. torch and the Hub client are imported inside the commands."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from ..data.classes import BENCHMARK_TITLES, NUM_FOLDS
from .options import Benchmark, ClipWeightsOption, HubNamespaceOption, JsonOption, Origin

weights_app = typer.Typer(
    name="weights",
    help="List, download, import and publish IMR-HSNet checkpoints (Hugging Face Hub, the authors' release).",
    no_args_is_help=True,
)
app.add_typer(weights_app)


def _console():
    from rich.console import Console

    return Console(markup=False)  # paths and names are shown as they are


def _table(title: str, rows) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    _console().print(table)


@weights_app.command("list", epilog="Examples:\n\n  imrseg weights list\n\n  imrseg weights list --json")
def list_weights(namespace: HubNamespaceOption = None, as_json: JsonOption = False) -> None:
    """The registry of official checkpoints, marking those already cached and where
    from (the Hub, or the authors' release), and those not on the Hub yet (fetched
    from the authors' release)."""
    from dataclasses import asdict

    from rich.table import Table

    from ..hub import cached_from, load_registry
    from ..paths import cache_root

    rows = []
    for entry in load_registry().entries.values():
        repo_id, revision = entry.location(namespace)
        origin = cached_from(entry, namespace)
        rows.append({**asdict(entry), "repo_id": repo_id, "revision": revision,
                     "on_hub": entry.on_hub(namespace), "cached": origin is not None, "cached_from": origin})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    # Repos named after their entry in one namespace go in the title, so the table fits 80 columns.
    owners = {row["repo_id"].split("/")[0] for row in rows}
    uniform = len(owners) == 1 and all(row["repo_id"].endswith("/" + row["name"]) for row in rows)
    where = f"Hub repos {owners.pop()}/<name>" if uniform else "Hub repos as listed"
    table = Table(title=f"IMR-HSNet checkpoints ({where}; 1-shot mIoU: the paper's figure for the fold)")
    columns = ["name", "steps", "1-shot mIoU", "revision", "cached"] + ([] if uniform else ["Hub repo"])
    for column in columns:
        table.add_column(column, no_wrap=column == "name", overflow="fold")
    for row in rows:
        miou = f"{row['paper_miou']:.1f}" if row["paper_miou"] is not None else "-"
        revision = row["revision"] if row["on_hub"] else "unpublished"
        cells = [row["name"], str(row["steps"]), miou, revision, row["cached_from"] or "-"]
        table.add_row(*cells, *([] if uniform else [row["repo_id"]]))
    _console().print(table)
    sources = sorted({row["source"] for row in rows if not row["on_hub"]})
    if sources:
        _console().print(f"unpublished: not on the Hub yet; fetched from the authors' release ({', '.join(sources)}) "
                         "on first use, or ahead with `imrseg weights download NAME`; cached from authors: converted "
                         f"in {cache_root() / 'weights'}")


@weights_app.command("download", epilog="Examples:\n\n  imrseg weights download imr-hsnet-resnet50-pascal-fold0\n\n  imrseg weights download --all\n\n  imrseg weights download imr-hsnet-vgg16-coco-fold2 --source authors --file-id FILE_ID\n\n  HF_HOME=/data/hf imrseg weights download imr-hsnet-vgg16-coco-fold2")
def download(
    names: Annotated[Optional[list[str]], typer.Argument(
        metavar="NAME", help="Registry names or Hub repo ids (owner/name, @revision optional); none: only "
                          "the CLIP weights.",
        show_default=False)] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Every registry entry.")] = False,
    source: Annotated[Origin, typer.Option(
        "--source", help="Where registry entries come from: hub (published entries), authors (their Google "
                         "Drive release, converted once into imrseg's cache) or auto (the caches, then the Hub, "
                         "then the authors).")] = Origin.auto,
    file_id: Annotated[Optional[str], typer.Option(
        "--file-id", metavar="ID", help="The Drive file id of the one entry's best_model.pt in the authors' "
                                        "release, when its path there does not name it alone.",
        show_default=False)] = None,
    refresh: Annotated[bool, typer.Option(
        "--refresh", help="Download from the authors' release again, accepting a file that differs from the "
                          "one converted before.")] = False,
    clip_weights: ClipWeightsOption = None,
    namespace: HubNamespaceOption = None,
) -> None:
    """Fetch checkpoints, and always the CLIP weights, for offline use: from the Hub into the
    Hugging Face cache, or from the authors' release into imrseg's cache."""
    from ..errors import InputError
    from ..hub import fetch_clip, fetch_weights, load_registry, locate_clip, locate_weights

    if all_entries and names:
        raise InputError("pass checkpoint names or --all, not both")
    specs = list(load_registry().entries) if all_entries else names or []
    if file_id is not None and len(specs) != 1:
        raise InputError("`file_id` names the file of one checkpoint: pass exactly one name with it")
    for spec in specs:
        files = fetch_weights(locate_weights(spec, namespace), source.value, file_id, refresh)
        where = f", from {files.release}" if files.release else ""
        typer.echo(f"{spec}: {files.weights} (sha256 {files.sha256}{where})")
    clip = locate_clip(clip_weights)
    typer.echo(f"CLIP {clip.spec}: {fetch_clip(clip)[0]}")


@weights_app.command("import", epilog="Examples:\n\n  imrseg weights import best_model.pt --out rn50-pascal-f0 --benchmark pascal --fold 0")
def import_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="The authors' best_model.pt.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (config.json, model.safetensors, "
                                                    "README.md); an import there before is replaced, a file "
                                                    "imrseg did not write is refused.", show_default=False)],
    benchmark: Annotated[Optional[Benchmark], typer.Option(help="Benchmark it was trained on.")] = None,
    fold: Annotated[Optional[int], typer.Option(min=0, max=NUM_FOLDS - 1, help="Its test fold (needs --benchmark).")] = None,
) -> None:
    """Convert an authors' best_model.pt to the Hub layout; nothing pickled is written."""
    from ..hub.publish import import_official

    info = import_official(checkpoint, out, benchmark.value if benchmark else None, fold)
    typer.echo(f"{out}: {info.backbone}, benchmark {info.benchmark or 'unknown'}, "
               f"fold {'unknown' if info.fold is None else info.fold}, {info.steps} refinement steps")
    typer.echo(f"sha256 {info.sha256}  {Path(info.path).name}")


@weights_app.command("push", epilog="Examples:\n\n  imrseg weights push rn50-pascal-f0 myorg/imr-hsnet-resnet50-pascal-fold0")
def push(
    folder: Annotated[Path, typer.Argument(help="A folder written by `imrseg weights import`.",
                                           show_default=False)],
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="owner/name on the Hub.", show_default=False)],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
) -> None:
    """Publish a converted folder to the Hub with a generated model card."""
    from ..hub.publish import push_folder

    url, commit, sha256 = push_folder(folder, repo_id, private=private)
    typer.echo(f"published {url}")
    typer.echo(f"registry entry: \"repo_id\": \"{repo_id}\", \"revision\": \"{commit}\", \"sha256\": \"{sha256}\"")


@weights_app.command("info", epilog="Examples:\n\n  imrseg weights info best_model.pt\n\n  imrseg weights info imr-hsnet-resnet50-pascal-fold0 --json\n\n  imrseg weights info myorg/my-checkpoint@v1")
def info(
    spec: Annotated[Optional[str], typer.Argument(
        metavar="SPEC", help="Registry name, Hub repo id (owner/name, @revision optional), Hub-layout folder "
                             "or best_model.pt (default: the default checkpoint).", show_default=False)] = None,
    namespace: HubNamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resolve and load a --weights spec, and say what it is and where it came from."""
    from ..hub import resolve_weights

    _, found = resolve_weights(spec, namespace)
    if as_json:
        typer.echo(json.dumps(found.to_dict(), indent=2))
        return
    rows = [("spec", found.spec), ("kind", found.kind), ("backbone", found.backbone),
            ("benchmark", BENCHMARK_TITLES.get(found.benchmark, "unknown")),
            ("fold", "unknown" if found.fold is None else str(found.fold)),
            ("refinement steps", str(found.steps)),
            ("classes", ", ".join(found.class_names) if found.class_names else "unknown"),
            ("parameters", f"{found.parameters:,}"),
            ("paper 1-shot mIoU", "-" if found.paper_miou is None else f"{found.paper_miou:.1f}"),
            ("sha256", found.sha256), ("from", found.origin())]
    _table("IMR-HSNet weights", rows)
