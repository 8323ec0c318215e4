"""Turning an authors' `best_model.pt` into the Hub layout (config.json +
model.safetensors + a model card) and publishing such a folder. Kept apart from
the loading side: only `imrseg weights import/push` and the authors' release need it."""
from __future__ import annotations

import os
from pathlib import Path

from ..data.classes import BENCHMARK_CLASSES, BENCHMARK_TITLES, NUM_FOLDS, fold_class_names, paper_steps
from ..errors import ImrsegError, NetworkError, one_line
from ..guard import OwnedFolder
from .card import CARD_FILE, CARD_MARK, imported_card
from .download import hf_endpoint, is_busy
from .weights import (CONFIG_FILE, WEIGHTS_FILE, WeightsInfo, build_model, config_bytes, resolve_weights,
                      safetensors_bytes)


def checkpoint_config(backbone: str, benchmark: str | None = None, fold: int | None = None) -> dict:
    """config.json of a converted checkpoint; the class names need both benchmark and fold."""
    if benchmark is not None and benchmark not in BENCHMARK_CLASSES:
        raise ImrsegError(f"unknown benchmark {benchmark!r}; expected one of {', '.join(BENCHMARK_CLASSES)}")
    if fold is not None and (benchmark is None or fold not in range(NUM_FOLDS)):
        raise ImrsegError(f"fold {fold}: a fold is 0-{NUM_FOLDS - 1} and needs a benchmark")
    return {"backbone": backbone, "benchmark": benchmark, "fold": fold,
            "steps": paper_steps(benchmark),
            "class_names": fold_class_names(benchmark, fold) if fold is not None else None}


def convert_official(checkpoint: str | os.PathLike, benchmark: str | None = None, fold: int | None = None):
    """(config.json's content, the model) of an authors' best_model.pt, loaded strictly:
    its backbone read from its keys, every tensor's name and shape that network's."""
    from ..models.checkpoint import infer_backbone, load_into, read_state_dict

    state_dict = read_state_dict(checkpoint)
    config = checkpoint_config(infer_backbone(state_dict, os.fspath(checkpoint)), benchmark, fold)
    model = build_model(config, os.fspath(checkpoint))
    load_into(model, state_dict, os.fspath(checkpoint))
    return config, model


def import_official(checkpoint: str | os.PathLike, out: str | os.PathLike, benchmark: str | None = None,
                    fold: int | None = None) -> WeightsInfo:
    """Convert an authors' best_model.pt into a folder in the Hub layout
    (config.json + model.safetensors + a model card); nothing pickled is written.
    `out` is written through the guard: held by this run alone, no link below it
    followed, and a file there that imrseg did not write refused (before any is
    written); a folder imported into before has its files replaced."""
    config, model = convert_official(checkpoint, benchmark, fold)
    with OwnedFolder(out, parameter="out", overwrite=None) as folder:
        folder.check([CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])  # refused now, before any is written
        folder.write(CONFIG_FILE, config_bytes(config))
        folder.write(WEIGHTS_FILE, safetensors_bytes(model))
        _, info = resolve_weights(str(folder.root))  # as every command will read it
        # The card says where the weights come from; written last, it describes the files beside it.
        folder.write(CARD_FILE, imported_card(info).encode("utf-8"))
    return info


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False) -> tuple[str, str, str]:
    """Publish a converted folder (its config.json and model.safetensors, exactly as
    they are, with a generated model card) in one commit; returns (commit url,
    commit id, sha256 of the weights) for the registry entry."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir():
        raise ImrsegError(f"{folder}: not a folder; convert an authors' best_model.pt with `imrseg weights import`")
    _, info = resolve_weights(str(folder))  # refuse to publish anything that does not load

    # A run's best/ (`imrseg train`) carries its own card: what was trained and its validation figures.
    own = folder / CARD_FILE
    trained = own.is_file() and CARD_MARK in own.read_text(encoding="utf-8", errors="replace")
    card = own.read_text(encoding="utf-8") if trained else imported_card(info, repo_id)
    what = "trained with imrseg train" if trained else "the authors' best_model.pt as safetensors"
    operations = [CommitOperationAdd(CONFIG_FILE, str(folder / CONFIG_FILE)),
                  CommitOperationAdd(WEIGHTS_FILE, str(folder / WEIGHTS_FILE)),
                  CommitOperationAdd(CARD_FILE, card.encode("utf-8"))]
    api = HfApi(endpoint=hf_endpoint())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id, operations=operations, commit_message=(
            f"IMR-HSNet ({info.backbone}, {BENCHMARK_TITLES.get(info.benchmark, 'unknown benchmark')}, fold "
            f"{info.fold}): {what}"))
    except (HfHubHTTPError, ValueError) as exc:  # no token at all gives a ValueError
        if is_busy(exc):
            raise NetworkError(f"{repo_id}: publishing {folder} failed ({one_line(exc)}); try again later") from None
        raise ImrsegError(f"{repo_id}: publishing {folder} failed ({one_line(exc)}); a write token is "
                          "needed: `hf auth login` or HF_TOKEN") from None
    except Exception as exc:  # no connection: the HTTP client's errors are many types
        raise NetworkError(f"{repo_id}: publishing {folder} failed: cannot reach {hf_endpoint()} "
                           f"({one_line(exc)})") from None
    return commit.commit_url, commit.oid, info.sha256
