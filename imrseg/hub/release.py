"""The authors' checkpoints in imrseg's cache. A registry entry's best_model.pt comes
from their release (see `drive`), is checked to load strictly as that entry's
IMR-HSNet, is converted once to the Hub layout (config.json + model.safetensors)
and is kept with a record (`release.jsonl`) of where it came from and the sha256 of
what was downloaded and written. A later download that differs from the record is
refused unless `refresh`; the cache never holds a part of a file (downloads go to a
temporary folder elsewhere, every file is written atomically through the guard)."""
from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

from ..durable import file_sha256
from ..errors import CheckpointError, ImrsegError, NetworkError, show_path
from ..guard import Fields, OwnedFolder
from ..paths import cache_root
from .download import hf_offline
from .drive import DriveFile, choose, download_file, list_release
from .publish import convert_official
from .registry import RegistryEntry
from .weights import CONFIG_FILE, WEIGHTS_FILE, WeightsFiles, config_bytes, safetensors_bytes

RECORD_FILE = "release.jsonl"


def release_folder(entry: RegistryEntry) -> Path:
    """Where the entry's converted copy lives: `$IMRSEG_CACHE/weights/<name>`."""
    return cache_root() / "weights" / entry.name


def read_record(entry: RegistryEntry) -> Fields | None:
    """The record of the entry's copy, None if there is none yet."""
    path = release_folder(entry) / RECORD_FILE
    if not os.path.lexists(path):
        return None
    rows = Fields.rows(path)
    if len(rows) != 1:
        raise ImrsegError(f"{show_path(path)}: holds {len(rows)} records, imrseg writes one; remove "
                          f"{show_path(path.parent)} to download it again")
    return rows[0]


def cached_release(entry: RegistryEntry, verify: bool = True) -> WeightsFiles | None:
    """The entry's converted files when the cache holds them as recorded (`verify`: the
    weights' sha256 checked too, else only that they are there), else None."""
    record = read_record(entry)
    if record is None:
        return None
    folder = release_folder(entry)
    config, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not all(_regular(p) for p in (config, weights)):
        return None
    sha256 = record.text("sha256")
    if verify and (file_sha256(weights) != sha256 or file_sha256(config) != record.text("config_sha256")):
        return None
    return WeightsFiles(config, weights, sha256, release=describe(record))


def describe(record: Fields) -> str:
    return (f"the authors' release {record.text('source')}: {show_path(record.text('path'))} "
            f"(id {record.text('file_id')})")


def fetch_release(entry: RegistryEntry, spec: str, file_id: str | None = None,
                  refresh: bool = False) -> WeightsFiles:
    """The entry's converted files: from the cache as recorded, else downloaded from the
    authors' release (`file_id`, else the registry's, else the one file whose path names
    the entry), checked, converted and recorded. `refresh` downloads again and accepts a
    file that differs from the one recorded."""
    record = read_record(entry)
    asked = file_id or entry.file_id or None
    if not refresh and (asked is None or record is None or asked == record.text("file_id")):
        cached = cached_release(entry)
        if cached is not None:
            return cached
    if hf_offline():
        raise NetworkError(f"{spec}: offline (HF_HUB_OFFLINE is set) and {entry.title} is not in imrseg's cache "
                           f"{show_path(release_folder(entry))}; run `imrseg weights download {entry.name}` where "
                           f"there is network, or {entry.by_hand()}")
    file = DriveFile(asked, "given by file id") if asked else choose(list_release(entry, spec), entry, spec)
    with tempfile.TemporaryDirectory(prefix="imrseg-download-") as temporary:
        downloaded = Path(temporary) / "best_model.pt"
        download_file(file, downloaded, entry, spec)
        sha256 = file_sha256(downloaded)
        if record is not None and not refresh and sha256 != record.text("download_sha256"):
            raise CheckpointError(
                f"{spec}: the authors' file {file} has sha256 {sha256}, not {record.text('download_sha256')} as "
                f"downloaded before ({describe(record)}); nothing was replaced: run `imrseg weights download "
                f"{entry.name} --refresh` to accept the new file")
        config, model = _convert(downloaded, entry, file, spec)
    weights_bytes, config_json = safetensors_bytes(model), config_bytes(config)
    with OwnedFolder(release_folder(entry), parameter="cache", overwrite=None) as folder:
        folder.clean()
        folder.write(WEIGHTS_FILE, weights_bytes)
        folder.write(CONFIG_FILE, config_json)
        row = {"name": entry.name, "backbone": entry.backbone, "benchmark": entry.benchmark, "fold": entry.fold,
               "source": entry.source, "file_id": file.id, "path": file.path, "download_sha256": sha256,
               "sha256": file_sha256(folder.path(WEIGHTS_FILE)), "config_sha256": file_sha256(folder.path(CONFIG_FILE))}
        folder.write(RECORD_FILE, (json.dumps(row) + "\n").encode("utf-8"))  # last: the copy is whole
        return WeightsFiles(folder.path(CONFIG_FILE), folder.path(WEIGHTS_FILE), row["sha256"],
                            release=describe(Fields(row, RECORD_FILE)))


def _convert(downloaded: Path, entry: RegistryEntry, file: DriveFile, spec: str):
    """(config, model) of the downloaded file, refused unless it loads strictly as the entry's network."""
    try:
        config, model = convert_official(downloaded, entry.benchmark, entry.fold)
    except CheckpointError as exc:
        reason = str(exc).replace(str(downloaded), "it")
        raise CheckpointError(f"{spec}: the authors' file {file} is not the expected checkpoint ({reason}); nothing "
                              f"was kept: {entry.pick_file()}, or {entry.by_hand()}") from None
    if config["backbone"] != entry.backbone:
        raise CheckpointError(f"{spec}: the authors' file {file} is a {config['backbone']} checkpoint, {entry.name} is "
                              f"{entry.backbone}; nothing was kept: {entry.pick_file()}, or {entry.by_hand()}")
    return config, model


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
