"""Task images fetched the ways Label Studio stores them, with its URL and API key.

A task's image field holds one of: an upload (`/data/upload/3/x.png`, or `upload/3/x.png`
in exports), a local-storage file (`/data/local-files/?d=dir/x.png`), a cloud object
(`s3://`, `gs://`, `azure-blob://`: Label Studio presigns it at
`/tasks/ID/presign/?fileuri=...` and redirects to the bucket), any other path on the
Label Studio server, a plain http(s) URL, or a `data:` URI. Paths on Label Studio are
fetched from LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY: a legacy token is sent as
`Token KEY`; a personal access token (a JWT refresh token) is exchanged at
`/api/token/refresh/` for an access token, sent as `Bearer` and renewed before it
expires. The key goes to Label Studio's own origin only (never to a bucket it redirects
to, nor to other hosts). Every download is counted as it arrives and stopped past the
byte limit; a failure is one line naming the field, the URL and what to do."""
from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from urllib.parse import urljoin, urlsplit

import httpx

from ..errors import ImrsegError, InputError, one_line, param

CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
TIMEOUT_S = 30.0
REFRESH_MARGIN_S = 30.0  # renew an access token this long before it expires
MAX_REDIRECTS = 5


class FetchError(ImrsegError):
    """Label Studio or another server did not give an image: unreachable, refused the
    key, or answered something else. The message names the field and what to do."""


def jwt_claims(token: str) -> dict | None:
    """A JWT's claims (read, not verified: the server that issued it checks it), or
    None when `token` is no JWT (a legacy token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioFiles:
    """Reads task images from one Label Studio instance (`url`, `api_key`; either may
    be None: then only plain URLs work, and a Label Studio path says which is missing).
    `max_bytes` bounds each download. Thread-safe."""

    def __init__(self, url: str | None, api_key: str | None, max_bytes: int,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/") + "/" if url else None
        if self.url and urlsplit(self.url).scheme not in ("http", "https"):
            raise InputError(f"LABEL_STUDIO_URL {url!r}: give the full address, like http://localhost:8080")
        self.api_key = api_key or None
        self.max_bytes = max_bytes
        self._client = httpx.Client(timeout=TIMEOUT_S, follow_redirects=True, max_redirects=MAX_REDIRECTS,
                                    transport=transport)
        self._lock = threading.Lock()
        self._access: tuple[str, float] | None = None  # (access token, when it expires)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ images
    def fetch(self, value: object, field: str, task_id: object = None) -> bytes:
        """The bytes of the image a task's `field` holds (`value`)."""
        where = param(field)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}: expected the image's URL or Label Studio path, got {value!r:.80}")
        value = value.strip()
        if value.startswith("data:"):
            return self._data_uri(value, where)
        if value.startswith(CLOUD_SCHEMES):
            if not isinstance(task_id, int):
                raise InputError(f"{where}: a cloud storage URI needs the task's id to be presigned")
            encoded = base64.urlsafe_b64encode(value.encode()).decode()
            return self._from_label_studio(f"tasks/{task_id}/presign/?fileuri={encoded}", where)
        if value.startswith(("upload/", "/upload/")):
            value = "/data/" + value.lstrip("/")
        scheme = urlsplit(value).scheme
        if scheme in ("http", "https"):
            if self._is_label_studio(value):
                return self._from_label_studio(value, where)
            return self._get(value, where, {})
        if scheme or not value.startswith("/"):
            raise InputError(f"{where}: {value!r:.120} is no http(s) URL, Label Studio path or cloud URI")
        return self._from_label_studio(value.lstrip("/"), where)

    def json(self, path: str, field: str):
        """A Label Studio API answer (GET `path`, relative to its URL), parsed."""
        data = self._from_label_studio(path, param(field))
        try:
            return json.loads(data)
        except ValueError:
            raise FetchError(f"{param(field)}: Label Studio's {path.split('?')[0]} answered no JSON") from None

    def _data_uri(self, value: str, where: str) -> bytes:
        head, _, body = value.partition(",")
        if not head.endswith(";base64"):
            raise InputError(f"{where}: a data URI must be base64")
        if len(body) * 3 // 4 > self.max_bytes:
            raise InputError(f"{where}: over the limit of {self.max_bytes} bytes")
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            raise InputError(f"{where}: a data URI that is not valid base64") from None

    def _is_label_studio(self, url: str) -> bool:
        return self.url is not None and _origin(url) == _origin(self.url)

    def _from_label_studio(self, path: str, where: str) -> bytes:
        if self.url is None:
            raise FetchError(f"{where}: {path[:120]!r} is on Label Studio: set LABEL_STUDIO_URL (and "
                             "LABEL_STUDIO_API_KEY) where imrseg serve runs")
        return self._get(urljoin(self.url, path), where, self.authorization())

    def _get(self, url: str, where: str, headers: dict) -> bytes:
        shown = _shown(url)
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code in (401, 403) and headers:
                    raise FetchError(f"{where}: Label Studio refused LABEL_STUDIO_API_KEY ({response.status_code} "
                                     f"for {shown}: {_detail(response)}); give a personal access token or a "
                                     "legacy token of that instance")
                if response.status_code != 200:
                    raise FetchError(f"{where}: {shown} answered {response.status_code} {_detail(response)}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchError(f"{where}: {shown} is {declared} bytes, over the limit of {self.max_bytes}")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise FetchError(f"{where}: {shown} is over the limit of {self.max_bytes} bytes")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise FetchError(f"{where}: cannot fetch {shown} ({type(exc).__name__}: {one_line(exc)})") from None

    # ------------------------------------------------------------------ the key
    def authorization(self) -> dict:
        """The header that carries the API key to Label Studio."""
        if not self.api_key:
            raise FetchError("LABEL_STUDIO_API_KEY is not set: imrseg serve needs a Label Studio access token "
                             "(Account & Settings) to read the project's files")
        claims = jwt_claims(self.api_key)
        if claims is None:
            return {"Authorization": f"Token {self.api_key}"}
        if claims.get("token_type") != "refresh":
            return {"Authorization": f"Bearer {self.api_key}"}
        with self._lock:
            if self._access is None or self._access[1] - REFRESH_MARGIN_S < time.time():
                self._access = self._refresh()
            return {"Authorization": f"Bearer {self._access[0]}"}

    def _refresh(self) -> tuple[str, float]:
        url = urljoin(self.url, "api/token/refresh/")
        try:
            response = self._client.post(url, json={"refresh": self.api_key})
        except httpx.HTTPError as exc:
            raise FetchError(f"LABEL_STUDIO_URL: cannot reach {_shown(url)} ({type(exc).__name__}: "
                             f"{one_line(exc)})") from None
        if response.status_code != 200:
            raise FetchError(f"LABEL_STUDIO_API_KEY: Label Studio refused the personal access token "
                             f"({response.status_code} at {_shown(url)}: {_detail(response)})")
        try:
            access = response.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise FetchError(f"LABEL_STUDIO_URL: {_shown(url)} gave no access token") from None
        expires = (jwt_claims(access) or {}).get("exp")
        return access, float(expires) if isinstance(expires, (int, float)) else time.time() + 60


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _shown(url: str) -> str:
    """The URL without its query (a presigned URL's query is a credential), shortened."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:160]


def _detail(response: httpx.Response) -> str:
    """What an error answer says (its first few KB), on one line and short."""
    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > 4096:
                break
        parsed = json.loads(body)
        text = parsed.get("detail") or parsed.get("error") if isinstance(parsed, dict) else None
    except (ValueError, httpx.HTTPError):
        text = None
    text = str(text) if text else body[:200].decode("utf-8", "replace")
    return one_line(Exception(text))[:200] if text.strip() else response.reason_phrase
