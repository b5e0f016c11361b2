"""Safe extraction of downloaded archives (tar with any compression Python reads, and zip).

:func:`safe_extract` writes every entry into a fresh temporary directory beside the target and only renames
(or merges) it into place once every entry has been accepted, so a refused or corrupt archive leaves nothing
behind. What is refused:

* **tar**: the member filter is the standard library's ``tarfile.data_filter`` (PEP 706; Python >= 3.11.4,
  3.12), the filter Python recommends for archives from the internet: it refuses members that would land
  outside the target (``..``, a path through a link), links pointing outside it or to an absolute path,
  and device files and FIFOs, and it drops set-uid/set-gid/other-writable permission bits and ownership. It is
  maintained with CPython (it follows ``os.path`` of the running OS) instead of by us. Two checks are stricter
  than ``data`` on purpose, and documented as such (:func:`_tar_filter`): an absolute member name is refused
  (``data`` would silently strip the leading ``/`` and extract it), and every symbolic or hard link is
  refused, even one pointing inside the target (the datasets are plain files; a link in a medical archive
  is a mistake or an attack).
* **zip**: the standard library has no such filter (``ZipFile.extract`` silently rewrites dangerous names
  instead of refusing them), so :func:`_zip_entry` keeps a small check: a name that is absolute (``/x``,
  ``C:x``), escapes with ``..`` (``\\`` counts as a separator) or contains a NUL byte is refused, as is an entry
  whose Unix mode says symbolic link, device or FIFO; the whole central directory is checked before anything
  is written, and each written path is checked to resolve inside the target.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from medkd.data.sources import SourceError

_OUTSIDE_ROOT = object()


class UnsafeArchiveError(SourceError):
    """An archive entry would land outside the target directory, or is a link or special file.

    Attributes:
        archive: Path of the archive.
        entry: The entry name exactly as stored in the archive.
        reason: Why it was refused.
    """

    def __init__(self, archive: str | Path, entry: str, reason: str) -> None:
        self.archive, self.entry, self.reason = str(archive), entry, reason
        super().__init__(f"{archive}: refusing archive entry {entry!r}: {reason}; nothing was extracted")


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None


def _normalise_root(archive: Path, root: str) -> str:
    """The ``root`` option as a relative POSIX path (refused like an entry name when unsafe)."""
    name = root.replace("\\", "/")
    if _is_absolute(name):
        raise UnsafeArchiveError(archive, root, "it is an absolute path")
    norm = posixpath.normpath(name) if name else "."
    if norm == ".." or norm.startswith("../"):
        raise UnsafeArchiveError(archive, root, "it escapes the target directory")
    if norm == ".":
        raise ValueError(f"root must name a directory inside the archive, got {root!r}")
    return norm


def _under_root(rel: str, root: str | None) -> str | None | object:
    """Strip ``root/`` from ``rel``; the root itself maps to None, other entries to ``_OUTSIDE_ROOT``."""
    if root is None:
        return rel
    if rel == root:
        return None
    if rel.startswith(root + "/"):
        return rel[len(root) + 1:]
    return _OUTSIDE_ROOT


# ------------------------------------------------------------------------------------------------- tar


_FILTER_REASONS = (  # tarfile.data_filter's refusals -> our reasons (tests and users read these)
    (tarfile.OutsideDestinationError, "it escapes the target directory"),
    (tarfile.AbsolutePathError, "it is an absolute path"),
    (tarfile.SpecialFileError, "it is a device, FIFO or other special file"),
    (tarfile.FilterError, "it is refused by tarfile's 'data' extraction filter"),
)


def _tar_filter(archive: Path, root: str | None, files: list[str]):
    """The extraction filter: ``tarfile.data_filter`` plus two stricter checks, then the ``root`` prefix.

    Stricter than ``data`` (both required by medkd, see the module docstring): absolute member names are
    refused rather than made relative, and symbolic and hard links are refused wherever they point. Members
    outside ``root`` are still passed through ``data_filter`` (so an unsafe member anywhere refuses the
    archive) but are not extracted.
    """

    def accept(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        if member.issym() or member.islnk():
            kind = "symbolic" if member.issym() else "hard"
            raise UnsafeArchiveError(archive, member.name,
                                     f"it is a {kind} link to {member.linkname!r}; links are refused")
        if _is_absolute(member.name):
            raise UnsafeArchiveError(archive, member.name, "it is an absolute path")
        try:
            member = tarfile.data_filter(member, dest)
        except tarfile.FilterError as exc:
            reason = next(text for kind, text in _FILTER_REASONS if isinstance(exc, kind))
            raise UnsafeArchiveError(archive, exc.tarinfo.name, f"{reason} ({exc})") from None
        rel = posixpath.normpath(member.name)
        stripped = _under_root(rel, root) if rel != "." else None
        if stripped is None or stripped is _OUTSIDE_ROOT:
            return None
        if member.isfile():
            files.append(stripped)
        return member if stripped == member.name else member.replace(name=stripped, deep=False)

    return accept


def _extract_tar(archive: Path, tmp: Path, root: str | None) -> list[str]:
    files: list[str] = []
    with tarfile.open(archive, "r:*") as tar:
        # One sequential pass (compressed tars are not re-read): each member goes through the filter before
        # it is written, and the caller deletes ``tmp`` if a later member is refused.
        tar.extractall(tmp, filter=_tar_filter(archive, root, files))
    return files


# ------------------------------------------------------------------------------------------------- zip


def _zip_entry(archive: Path, info: zipfile.ZipInfo) -> tuple[str | None, bool]:
    """(safe relative POSIX path or None for the archive root, is a directory) of one zip entry.

    The small hand-written check zip needs (see the module docstring).
    """
    raw = info.filename
    name = raw.replace("\\", "/")
    if "\x00" in name:
        raise UnsafeArchiveError(archive, raw, "its name contains a NUL byte")
    if _is_absolute(name):
        raise UnsafeArchiveError(archive, raw, "it is an absolute path")
    norm = posixpath.normpath(name) if name else "."
    if norm == ".." or norm.startswith("../"):
        raise UnsafeArchiveError(archive, raw, "it escapes the target directory")
    ftype = stat.S_IFMT((info.external_attr >> 16) & 0xFFFF)
    if ftype == stat.S_IFLNK:
        raise UnsafeArchiveError(archive, raw, "it is a symbolic link; links are refused")
    if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchiveError(archive, raw, "it is a device, FIFO or other special file")
    return (None if norm == "." else norm), info.is_dir() or ftype == stat.S_IFDIR


def _inside(root: Path, path: Path, archive: Path, raw: str) -> Path:
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise UnsafeArchiveError(archive, raw, "it resolves outside the target directory")
    return path


def _extract_zip(archive: Path, tmp: Path, root: str | None) -> list[str]:
    files: list[str] = []
    with zipfile.ZipFile(archive) as zf:
        plan = [(info, *_zip_entry(archive, info)) for info in zf.infolist()]  # all checked before writing
        for info, rel, is_dir in plan:
            rel = _under_root(rel, root) if rel is not None else None
            if rel is None or rel is _OUTSIDE_ROOT:
                continue
            out = tmp / rel
            if is_dir:
                out.mkdir(parents=True, exist_ok=True)
                _inside(tmp, out, archive, info.filename)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(_inside(tmp, out, archive, info.filename), "wb") as fh:
                shutil.copyfileobj(src, fh, 1 << 20)
            files.append(rel)
    return files


# ------------------------------------------------------------------------------------------- publishing


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def _move_merge(src: Path, dst: Path) -> None:
    if src.is_dir() and dst.is_dir():
        for child in list(src.iterdir()):
            _move_merge(child, dst / child.name)
        src.rmdir()
    else:
        os.replace(src, dst)


def _publish(tmp: Path, target: Path, archive: Path) -> None:
    """Move the extracted tree ``tmp`` to ``target`` (renamed if absent or empty, merged otherwise)."""
    if not target.exists():
        os.replace(tmp, target)
        return
    if not target.is_dir():
        raise FileExistsError(f"cannot extract {archive}: {target} exists and is not a directory")
    if not any(target.iterdir()):
        target.rmdir()
        os.replace(tmp, target)
        return
    collisions = []
    for path in sorted(tmp.rglob("*")):
        dst = target / path.relative_to(tmp)
        if path.is_dir():
            if dst.exists() and not dst.is_dir():
                collisions.append(str(path.relative_to(tmp)))
        elif dst.exists() or dst.is_symlink():
            collisions.append(str(path.relative_to(tmp)))
    if collisions:
        raise FileExistsError(
            f"cannot extract {archive} into {target}: {len(collisions)} entries already exist there "
            f"(e.g. {collisions[:5]}); nothing was changed"
        )
    _move_merge(tmp, target)


def safe_extract(archive: str | Path, target_dir: str | Path, *, root: str | None = None) -> list[str]:
    """Extract a tar (any compression Python reads: none, gz, bz2, xz) or zip archive safely.

    Entries are written into a fresh temporary directory beside ``target_dir``; only when every entry has been
    accepted and written is that directory renamed to ``target_dir`` (or, when ``target_dir`` already exists
    and is not empty, its contents are moved in - refused whole if any file would be overwritten). A refused
    or corrupt archive therefore leaves nothing behind. What is refused: see the module docstring.

    Args:
        archive: Path of the archive (zip is recognised by its ``PK`` signature, anything else is read as tar).
        target_dir: Directory to create (or merge into).
        root: Optional entry prefix (e.g. ``"Task09_Spleen"``): only entries under it are extracted, with the
            prefix removed; entries elsewhere are skipped but still checked for safety.

    Returns:
        Sorted relative POSIX paths of the extracted files.

    Raises:
        UnsafeArchiveError: An entry is absolute, escapes with ``..``, is a symbolic/hard link, a device or FIFO.
        ValueError: Not a tar/zip archive, a corrupt archive (both name the file), or no entry under ``root``.
        FileExistsError: Merging would overwrite existing files.
        FileNotFoundError: ``archive`` does not exist.
    """
    archive = Path(archive)
    target = Path(os.path.abspath(target_dir))
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    if root is not None:
        root = _normalise_root(archive, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.extract-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        try:
            files = _extract_zip(archive, tmp, root) if _is_zip(archive) else _extract_tar(archive, tmp, root)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            raise ValueError(f"{archive}: not a readable tar or zip archive ({exc})") from exc
        if root is not None and not any(tmp.iterdir()):
            raise ValueError(f"{archive}: no entry under {root!r}")
        _publish(tmp, target, archive)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(set(files))
