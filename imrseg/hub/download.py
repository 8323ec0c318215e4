"""Files from the Hugging Face Hub: the standard cache, a rich progress bar, and
errors that name the spec and the command to run. Nothing downloaded is unpickled."""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

from huggingface_hub import constants as hf_constants

from .. import __version__
from ..errors import CheckpointError, ImrsegError, NetworkError, one_line
from ..paths import hf_cache_dir

COMMIT = re.compile(r"[0-9a-f]{40}")
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json")


def looks_like_path(spec: str) -> bool:
    """A spec meant as a file or folder: repo ids have one slash and no file suffix."""
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1 or spec.endswith(FILE_SUFFIXES)


def is_repo_id(name: str) -> bool:
    return bool(REPO_ID.fullmatch(name)) and not looks_like_path(name)


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


def hf_offline() -> bool:
    return hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


class ProgressBar:
    """The download bar, drawn by rich on stderr, with the part of tqdm's interface
    that hf_hub_download drives (it also passes tqdm's unit options, ignored here)."""

    def __init__(self, *, desc: str = "", total: float | None = None, initial: float = 0, **_tqdm_options):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self._task = self._progress.add_task(desc, total=total, completed=initial)
        self._progress.start()

    def update(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fetch(repo_id: str, filename: str, revision: str | None = None, *, spec: str, download: str,
          cache_first: bool = False) -> Path:
    """One file of a Hub model repo, from the HF cache or downloaded into it; errors
    name `spec` and, when the file is out of reach, the `download` command to run.
    `cache_first` skips asking the Hub whether a branch moved: for files whose
    content the caller has pinned otherwise (a registry entry, a CLIP tag)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (HFValidationError, LocalEntryNotFoundError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import are_progress_bars_disabled

    cache_dir, endpoint, where = hf_cache_dir(), hf_endpoint(), f"{repo_id}@{revision or 'main'}"
    if cache_first:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    offline = hf_offline()
    try:
        with _hub_logger_quiet():
            unreachable = None if offline else _unreachable(repo_id, filename, revision, endpoint)
            # Out of reach, the cache alone answers (as huggingface_hub does offline), at once.
            return Path(hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                local_files_only=offline or unreachable is not None, library_name="imrseg",
                library_version=__version__, tqdm_class=None if are_progress_bars_disabled() else ProgressBar))
    except RepositoryNotFoundError:
        raise ImrsegError(f"{spec}: Hub repository {repo_id} not found at {endpoint} (or it is private: "
                          "log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ImrsegError(f"{spec}: revision {revision} not found in Hub repository {repo_id}") from None
    except RemoteEntryNotFoundError:
        raise CheckpointError(f"{spec}: {where} has no {filename}; imrseg reads the Hub layout "
                              "(config.json + model.safetensors, see `imrseg weights import`)") from None
    except HFValidationError as exc:
        raise ImrsegError(f"{spec}: not a valid Hub repository or revision ({one_line(exc)})") from None
    except LocalEntryNotFoundError:
        if offline:
            reason = "offline (HF_HUB_OFFLINE is set)"
        elif unreachable:
            reason = f"cannot reach {endpoint} ({_reason(unreachable)})"
        else:  # reached once, then not: huggingface_hub's own fallback to the cache
            reason = f"cannot reach {endpoint}"
        raise NetworkError(f"{spec}: {reason} and {filename} of {where} is not in the cache {cache_dir}; "
                           f"run `{download}` where there is network, or pass a local file") from None
    except OSError as exc:
        if exc.errno is not None and not isinstance(exc, ConnectionError):  # the disk, not the network
            raise ImrsegError(f"{spec}: saving {filename} in the cache {cache_dir} failed "
                              f"({exc.strerror or one_line(exc)})") from None
        raise NetworkError(f"{spec}: downloading {filename} from {where} failed ({_reason(exc)})") from None
    except Exception as exc:  # the connection lost mid-download: the HTTP client's errors are many types
        raise NetworkError(f"{spec}: downloading {filename} from {where} failed ({_reason(exc)})") from None


# Statuses that say the Hub is there but cannot answer now (huggingface_hub retries these).
BUSY_STATUSES = (408, 429)


def is_busy(exc: Exception) -> bool:
    """An HTTP error that is the server's state, not the request's: a later try may work."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status is not None and (status >= 500 or status in BUSY_STATUSES)


def _unreachable(repo_id: str, filename: str, revision: str | None, endpoint: str) -> Exception | None:
    """Ask the Hub once about the file, without huggingface_hub's retries (about half a
    minute when offline): the error when it cannot be reached (no connection, a timeout,
    a server error), None when it answers. A missing repo, revision or file is raised."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint),
                             library_name="imrseg", library_version=__version__, endpoint=endpoint)
    except HFValidationError:
        raise
    except HfHubHTTPError as exc:
        if is_busy(exc) or getattr(exc, "response", None) is None:
            return exc
        raise
    except Exception as exc:  # no route, DNS, TLS, timeout: whatever the HTTP client raises
        return exc
    return None


def _reason(exc: Exception) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return f"HTTP {status}" if status else one_line(exc)


@contextlib.contextmanager
def _hub_logger_quiet():
    """huggingface_hub logs every failed request as a warning (twice where the root logger
    also has a handler); imrseg says what failed itself, in one line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def snapshot_commit(path: Path) -> str | None:
    """The commit a file of the HF cache belongs to (…/snapshots/<commit>/<file>)."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None
