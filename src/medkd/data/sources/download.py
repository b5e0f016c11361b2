"""Resumable HTTP(S) downloads with MD5/SHA-256 verification.

:func:`download` streams a URL into ``<dest>.part``; an existing ``.part`` is resumed with an HTTP ``Range``
request (a server that answers 200 instead of 206 restarts it), the checksum(s) are checked, and only then
is the file renamed to ``dest``. A mismatch deletes the partial file and raises :class:`ChecksumError`; an
interrupted transfer keeps it (:class:`DownloadError`) so the next call resumes.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from medkd import __version__
from medkd.data.sources import SourceError

log = logging.getLogger(__name__)

HEX_LENGTH = {"md5": 32, "sha256": 64}
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


class ChecksumError(SourceError):
    """A downloaded or placed file does not have the pinned size or checksum.

    Attributes:
        source: URL or file path that was checked.
        algorithm: ``"md5"``, ``"sha256"`` or ``"size"``.
        expected: The pinned value.
        actual: The value computed from the received bytes.
    """

    def __init__(self, source: str, algorithm: str, expected: str, actual: str) -> None:
        self.source, self.algorithm, self.expected, self.actual = source, algorithm, expected, actual
        super().__init__(f"{algorithm} mismatch for {source}: expected {expected}, got {actual}")


class DownloadError(SourceError):
    """The server could not be reached, refused the request, or the transfer broke off.

    When the transfer broke off, the ``.part`` file is kept and the next call resumes it.
    """


# ------------------------------------------------------------------------------------------ checksums


def expected_digests(md5: str | None, sha256: str | None) -> dict[str, str]:
    """Validated, lower-cased ``{algorithm: hex}`` of the checksums that are not None.

    Raises:
        ValueError: a checksum that is not 32 (MD5) or 64 (SHA-256) hexadecimal digits.
    """
    out: dict[str, str] = {}
    for algorithm, value in (("md5", md5), ("sha256", sha256)):
        if value is None:
            continue
        text = str(value).strip().lower()
        if len(text) != HEX_LENGTH[algorithm] or not _HEX_RE.match(text):
            raise ValueError(f"{algorithm} checksum {value!r} is not {HEX_LENGTH[algorithm]} hexadecimal digits")
        out[algorithm] = text
    return out


def _new_hashers() -> dict[str, Any]:
    return {"md5": hashlib.md5(), "sha256": hashlib.sha256()}


def _hash_file_into(path: Path, hashers: Mapping[str, Any], chunk: int = 1 << 20) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            for h in hashers.values():
                h.update(block)


def file_digests(path: str | Path, chunk: int = 1 << 20) -> dict[str, str]:
    """MD5 and SHA-256 of a file.

    Args:
        path: File to hash.
        chunk: Read size in bytes.

    Returns:
        ``{"md5": hex, "sha256": hex}`` (lower-case).
    """
    hashers = _new_hashers()
    _hash_file_into(Path(path), hashers, chunk)
    return {k: h.hexdigest() for k, h in hashers.items()}


def checksum_mismatch(expected: Mapping[str, str], actual: Mapping[str, str]) -> tuple[str, str, str] | None:
    """The first ``(algorithm, expected, actual)`` that differs, or None when every expected checksum matches."""
    for algorithm, value in expected.items():
        if actual[algorithm] != value:
            return algorithm, value, actual[algorithm]
    return None


# ------------------------------------------------------------------------------------------- download


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs can be downloaded, got {url!r}")


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"medkd/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
def _stream_to_part(
    url: str, part: Path, *, chunk: int, timeout: float, progress: bool, label: str
) -> tuple[dict[str, str], bool]:
    """Fetch ``url`` into ``part``, resuming what is there. Returns (digests of the whole part, resumed?)."""
    offset = part.stat().st_size if part.exists() else 0
    hashers = _new_hashers()
    if offset:
        _hash_file_into(part, hashers)
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # Range not satisfiable: the partial file already holds the whole body (or more); its checksum
            # decides.
            log.info("%s: server reports the partial file is complete (%d bytes)", url, offset)
            return {k: h.hexdigest() for k, h in hashers.items()}, True
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {url} failed: {exc}") from exc

    with resp:
        status = resp.status
        total: int | None = None
        if offset and status == 206:
            match = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                raise DownloadError(
                    f"download of {url}: server answered the range request for bytes {offset}- with "
                    f"Content-Range {resp.headers.get('Content-Range')!r}; delete {part} to restart"
                )
            if match.group(3) != "*":
                total = int(match.group(3))
            mode = "ab"
            log.info("%s: resuming at byte %d", url, offset)
        elif status == 200:
            if offset:
                log.info("%s: server ignored the range request; restarting from byte 0", url)
                offset = 0
                hashers = _new_hashers()
            mode = "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise DownloadError(f"download of {url} failed: unexpected HTTP status {status}")
        resumed = mode == "ab"

        from tqdm import tqdm  # here, not at the top: the Snakefile imports this module with only Snakemake installed

        with open(part, mode) as fh, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
            disable=not progress, leave=False,
        ) as bar:
            try:
                while block := resp.read(chunk):
                    fh.write(block)
                    for h in hashers.values():
                        h.update(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                fh.flush()
                raise DownloadError(
                    f"download of {url} was interrupted after {fh.tell()} bytes ({exc}); the partial file "
                    f"{part} is kept and the next attempt resumes it"
                ) from exc
    received = part.stat().st_size
    if total is not None and received < total:
        raise DownloadError(
            f"download of {url} was interrupted: received {received} of {total} bytes; the partial file "
            f"{part} is kept and the next attempt resumes it"
        )
    return {k: h.hexdigest() for k, h in hashers.items()}, resumed


def download_verified(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    chunk: int = 1 << 20,
    timeout: float = 60,
    progress: bool = True,
) -> tuple[Path, dict[str, str]]:
    """:func:`download`, also returning the MD5 and SHA-256 of the file."""
    _check_url(url)
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    expected = expected_digests(md5, sha256)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        digests = file_digests(dest, chunk)
        mismatch = checksum_mismatch(expected, digests)
        if mismatch is None:
            log.info("%s already present%s; not downloading", dest, " and verified" if expected else "")
            return dest, digests
        log.warning("%s exists but its %s is %s, expected %s; downloading it again", dest, mismatch[0],
                    mismatch[2], mismatch[1])
        dest.unlink()

    part = _part_path(dest)
    for attempt in range(2):
        digests, resumed = _stream_to_part(url, part, chunk=chunk, timeout=timeout, progress=progress,
                                           label=dest.name)
        mismatch = checksum_mismatch(expected, digests)
        if mismatch is None:
            break
        part.unlink(missing_ok=True)
        if resumed and attempt == 0:
            # The kept prefix may itself be stale (the file changed on the server, or it was corrupted):
            # one clean restart before blaming the source.
            log.warning("%s: resumed download fails its %s check; restarting from scratch", url, mismatch[0])
            continue
        raise ChecksumError(url, *mismatch)
    os.replace(part, dest)
    return dest, digests


def download(
    url: str,
    dest: str | Path,
    md5: str | None = None,
    sha256: str | None = None,
    chunk: int = 1 << 20,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` with resume and checksum verification.

    The body is streamed to ``<dest>.part``. An existing ``.part`` is resumed with ``Range: bytes=<size>-``;
    a 206 answer is appended (its ``Content-Range`` must start at that offset), a 200 answer (server ignores
    ranges) restarts the file, and a 416 answer means the partial file is already complete. If a resumed file
    fails its checksum, it is deleted and downloaded once more from byte 0. When the checksum(s) match, the
    ``.part`` is renamed to ``dest`` with :func:`os.replace`.

    Args:
        url: ``http://`` or ``https://`` URL (redirects are followed).
        dest: Final path of the file.
        md5: Expected MD5 (32 hex digits) or None.
        sha256: Expected SHA-256 (64 hex digits) or None. With neither, the file is taken as received.
        chunk: Bytes per read.
        timeout: Socket timeout in seconds (connect and each read).
        progress: Show a tqdm progress bar (stderr).

    Returns:
        ``dest`` as a Path. If ``dest`` already exists with matching checksums (or none are given), nothing is
        downloaded.

    Raises:
        ChecksumError: The received bytes do not match; no ``dest`` and no ``.part`` are left behind.
        DownloadError: HTTP error, unreachable host, or an interrupted transfer (the ``.part`` is kept then).
        ValueError: Not an http(s) URL, or a malformed checksum.
    """
    path, _ = download_verified(url, dest, md5=md5, sha256=sha256, chunk=chunk, timeout=timeout,
                                 progress=progress)
    return path

