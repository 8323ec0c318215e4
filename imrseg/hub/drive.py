"""The authors' release on Google Drive, read with gdown: their shared folder listed
without downloading it, the one checkpoint for a registry entry found by its path
there, and one file downloaded with a progress bar. Every failure is one line that
names the route that always works: the file downloaded by hand."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..data.classes import BACKBONE_TITLES, BENCHMARK_TITLES
from ..errors import CheckpointError, ImrsegError, NetworkError, one_line, show_path
from .registry import RegistryEntry

# Seconds to connect, then between bytes: a machine without network fails at once.
TIMEOUT = (15, 60)
CHECKPOINT_SUFFIXES = (".pt", ".pth")
CHECKPOINT_NAME = "best_model.pt"  # what the authors' train.py saves
# How a path may name what a checkpoint is: words between separators (/, _, -, ., space).
WORDS = {
    "backbone": {"resnet50": r"res(?:net)?-?50|rn-?50|r50", "vgg16": r"vgg(?:-?16)?"},
    "benchmark": {"pascal": r"pascal(?:-?5i)?|pas|voc", "coco": r"coco(?:-?20i)?"},
}
FOLD = re.compile(r"(?<![a-z0-9])(?:fold|split|f)[-_ ]?([0-9])(?![0-9])")
SHOWN = 6  # candidates named in one error line


@dataclass(frozen=True)
class DriveFile:
    id: str
    path: str  # inside the shared folder, "/"-separated

    def __str__(self) -> str:
        return f"{show_path(self.path)} (id {self.id})"


def list_release(entry: RegistryEntry, spec: str) -> list[DriveFile]:
    """Every file of the entry's shared folder, subfolders included; nothing is downloaded."""
    import gdown

    try:
        found = gdown.download_folder(url=entry.source, skip_download=True, quiet=True, timeout=TIMEOUT)
    except Exception as exc:  # gdown's own errors and the HTTP client's, of many types
        raise _network_error(entry, spec, f"listing {entry.source}", exc, downloading=False) from None
    return [DriveFile(item.id, str(item.path).replace("\\", "/")) for item in found]


def describes(path: str, entry: RegistryEntry) -> bool:
    """Whether `path` names the entry's backbone, benchmark and fold, and no other."""
    text = path.lower()
    for key, words in WORDS.items():
        named = {value for value, pattern in words.items()
                 if re.search(rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])", text)}
        if named != {getattr(entry, key)}:
            return False
    return {int(m) for m in FOLD.findall(text)} == {entry.fold}


def choose(files: list[DriveFile], entry: RegistryEntry, spec: str) -> DriveFile:
    """The one checkpoint file whose path names the entry (a best_model.pt preferred
    among several); anything else is a one-line error listing the candidates."""
    checkpoints = [f for f in files if f.path.lower().endswith(CHECKPOINT_SUFFIXES)]
    found = [f for f in checkpoints if describes(f.path, entry)]
    best = [f for f in found if f.path.rpartition("/")[2] == CHECKPOINT_NAME]
    if len(found) == 1 or len(best) == 1:
        return best[0] if len(best) == 1 else found[0]
    what = (f"{BACKBONE_TITLES.get(entry.backbone, entry.backbone)}, "
            f"{BENCHMARK_TITLES.get(entry.benchmark, entry.benchmark)} and fold {entry.fold}")
    shown = found or checkpoints
    listed = "; ".join(map(str, shown[:SHOWN])) + ("; ..." if len(shown) > SHOWN else "")
    if found:
        head = f"{len(found)} files in the authors' release {entry.source} name {what}: {listed}"
    else:
        head = (f"no file in the authors' release {entry.source} names {what} in its path ("
                + (f"its checkpoint files: {listed}" if checkpoints else f"{len(files)} files, none a .pt") + ")")
    raise ImrsegError(f"{spec}: {head}; {entry.pick_file()}, or {entry.by_hand()}")


def download_file(file: DriveFile, output: Path, entry: RegistryEntry, spec: str) -> None:
    """`file` into `output` (a fresh path outside imrseg's cache), with a progress bar on
    stderr; a failure leaves no file there."""
    import gdown
    from huggingface_hub.utils import are_progress_bars_disabled

    from .download import ProgressBar

    bar, done = None, 0

    def progress(so_far: int, total: int | None) -> None:
        nonlocal bar, done
        if bar is None and not are_progress_bars_disabled():
            bar = ProgressBar(desc=entry.name, total=total)
        if bar is not None:
            bar.update(so_far - done)
        done = so_far

    try:
        gdown.download(id=file.id, output=str(output), quiet=True, progress=progress, timeout=TIMEOUT)
    except Exception as exc:  # gdown's own errors and the HTTP client's, of many types
        output.unlink(missing_ok=True)
        raise _network_error(entry, spec, f"downloading {file}", exc, downloading=True) from None
    finally:
        if bar is not None:
            bar.close()
    if not output.is_file():
        raise CheckpointError(f"{spec}: Google Drive gave no file for {file}; {entry.by_hand()}")


def _network_error(entry: RegistryEntry, spec: str, doing: str, exc: Exception, downloading: bool) -> NetworkError:
    import gdown

    reason = one_line(exc)
    if "too many users" in reason.lower():  # Drive's page when a file's download quota is used up
        why = ("Google Drive refuses it for now: too many users have downloaded the file recently "
               "(its download quota; it resets within a day)")
    elif isinstance(exc, gdown.FileURLRetrievalError):
        why = f"Google Drive gives no download for it ({reason})"
    elif isinstance(exc, gdown.DownloadError):
        first = one_line(str(exc).strip().split("\n")[0])  # gdown's next lines name a part file, not kept here
        why = f"it stopped midway and nothing was kept ({first})" if downloading else f"Google Drive: {reason}"
    else:
        why = f"cannot reach Google Drive ({reason})"
    return NetworkError(f"{spec}: {doing} from the authors' release failed: {why}; try again later, or "
                        f"{entry.by_hand()}")
