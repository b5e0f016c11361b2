"""Tests of medkd.data.sources (download, archive, fetch, spec): downloads served from 127.0.0.1 (with Range support implemented here),
checksums, resume, safe extraction, manual datasets and config/datasets.yaml validation."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import tarfile
import threading
import zipfile
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medkd.data.sources import SourceError
from medkd.data.sources.archive import UnsafeArchiveError, safe_extract
from medkd.data.sources.download import ChecksumError, DownloadError, download
from medkd.data.sources.fetch import ARCHIVE_DIR_NAME, MARKER_NAME, ManualDatasetMissing, fetch_dataset
from medkd.data.sources.spec import DatasetSpecError, load_datasets_yaml, validate_dataset_spec

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes, every byte value present


# ----------------------------------------------------------------------------------- test HTTP server


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        self.cut_after: dict[str, int] = {}  # path -> body bytes sent before the connection is dropped
        self.base = ""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        st: _State = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        st.requests.append((self.path, rng))
        data = st.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and st.honour_range:
            match = re.fullmatch(r"bytes=(\d+)-", rng)
            assert match, rng
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        cut = st.cut_after.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the socket closes afterwards

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State()  # type: ignore[attr-defined]
    httpd.state.base = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ archive helpers


def tar_bytes(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(entries: list[zipfile.ZipInfo | tuple[str, bytes]], link_target: bytes = b"/etc") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                zf.writestr(entry, link_target)
            else:
                zf.writestr(*entry)
    return buf.getvalue()


def link_info(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


TOY_ENTRIES = [
    ("Task/dataset.json", b'{"name": "toy"}'),
    ("Task/imagesTr/a.nii.gz", b"image-a"),
    ("Task/imagesTr/b.nii.gz", b"image-b"),
    ("Task/imagesTr/._a.nii.gz", b"appledouble"),  # hidden: not counted by the globs
    ("README.txt", b"outside the root"),
]


def toy_spec(url: str, **checksums) -> dict:
    return {
        "kind": "download",
        "description": "toy MSD-like task",
        "licence": "CC0",
        "citation": "nobody",
        "converter": "msd",
        "experiments": ["mtms"],
        "url": url,
        "root": "Task",
        "expected": ["dataset.json", {"path": "imagesTr/*.nii.gz", "count": 2}],
        **checksums,
    }


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ------------------------------------------------------------------------------------------- download


def test_download_fetches_and_verifies(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "dl" / "f.bin"
    out = download(f"{server.base}/f.bin", dest, md5=md5(PAYLOAD), sha256=sha256(PAYLOAD), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["f.bin"]
    assert server.requests == [("/f.bin", None)]
    # already present with a matching checksum: no new request
    download(f"{server.base}/f.bin", dest, md5=md5(PAYLOAD).upper(), progress=False)
    assert len(server.requests) == 1


def test_download_replaces_a_present_file_with_a_wrong_checksum(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    download(f"{server.base}/f.bin", dest, sha256=sha256(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


@pytest.mark.parametrize("served", [PAYLOAD[:-100], PAYLOAD[:5000] + b"X" + PAYLOAD[5001:]],
                         ids=["truncated", "altered"])
def test_download_checksum_mismatch_leaves_nothing(server, tmp_path, served):
    server.files["/f.bin"] = served
    dest = tmp_path / "dl" / "f.bin"
    with pytest.raises(ChecksumError) as info:
        download(f"{server.base}/f.bin", dest, md5=md5(PAYLOAD), progress=False)
    err = info.value
    assert err.algorithm == "md5" and err.expected == md5(PAYLOAD) and err.actual == md5(served)
    assert f"{server.base}/f.bin" in str(err) and md5(PAYLOAD) in str(err) and md5(served) in str(err)
    assert leftovers(dest.parent) == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    half = len(PAYLOAD) // 2
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:half])
    download(f"{server.base}/f.bin", dest, sha256=sha256(PAYLOAD), progress=False)
    assert server.requests == [("/f.bin", f"bytes={half}-")]
    assert dest.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["f.bin"]


def test_dropped_connection_keeps_part_and_next_call_resumes(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after["/f.bin"] = 3000
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="resumes"):
        download(f"{server.base}/f.bin", dest, md5=md5(PAYLOAD), chunk=1024, progress=False)
    part = tmp_path / "f.bin.part"
    assert part.read_bytes() == PAYLOAD[:3000] and not dest.exists()
    download(f"{server.base}/f.bin", dest, md5=md5(PAYLOAD), chunk=1024, progress=False)
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=3000-")]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:4000])
    download(f"{server.base}/f.bin", tmp_path / "f.bin", md5=md5(PAYLOAD), progress=False)
    assert server.requests == [("/f.bin", "bytes=4000-")]  # asked to resume, got 200, rewrote from byte 0
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_stale_partial_file_is_restarted_once(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(b"\xff" * 4000)  # wrong prefix: resumed result fails its md5
    download(f"{server.base}/f.bin", tmp_path / "f.bin", md5=md5(PAYLOAD), progress=False)
    assert server.requests == [("/f.bin", "bytes=4000-"), ("/f.bin", None)]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_complete_partial_file_answered_416_is_verified(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    download(f"{server.base}/f.bin", tmp_path / "f.bin", md5=md5(PAYLOAD), progress=False)
    assert server.requests == [("/f.bin", f"bytes={len(PAYLOAD)}-")]
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD and leftovers(tmp_path) == ["f.bin"]


def test_download_http_error_and_bad_arguments(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download(f"{server.base}/missing.bin", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="http"):
        download("ftp://127.0.0.1/x", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="32 hexadecimal"):
        download(f"{server.base}/x", tmp_path / "x", md5="abc", progress=False)
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_safe_extract_tar_any_compression_with_root(tmp_path, mode):
    archive = tmp_path / "toy.tar"
    archive.write_bytes(tar_bytes(TOY_ENTRIES, mode))
    files = safe_extract(archive, tmp_path / "out", root="Task")
    assert files == ["dataset.json", "imagesTr/._a.nii.gz", "imagesTr/a.nii.gz", "imagesTr/b.nii.gz"]
    assert (tmp_path / "out" / "imagesTr" / "b.nii.gz").read_bytes() == b"image-b"
    assert not (tmp_path / "out" / "README.txt").exists()
    assert leftovers(tmp_path) == ["out", "toy.tar"]


def test_safe_extract_zip_and_merge_into_existing_dir(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes([("d/x.txt", b"x"), ("d/sub/y.txt", b"y")]))
    target = tmp_path / "out"
    (target / "d").mkdir(parents=True)
    (target / "d" / "keep.txt").write_bytes(b"k")
    assert safe_extract(archive, target) == ["d/sub/y.txt", "d/x.txt"]
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "d/keep.txt", "d/sub/y.txt", "d/x.txt"]
    # extracting again would overwrite files: refused whole, nothing changed, no temp dir left
    (target / "d" / "x.txt").write_bytes(b"edited")
    with pytest.raises(FileExistsError, match="already exist"):
        safe_extract(archive, target)
    assert (target / "d" / "x.txt").read_bytes() == b"edited"
    assert leftovers(tmp_path) == ["a.zip", "out"]


def _unsafe_tars(outside: Path) -> dict[str, list]:
    return {
        "dotdot": [("good/a.txt", b"a"), ("../evil.txt", b"evil")],
        "nested_dotdot": [("good/../../evil.txt", b"evil")],
        "absolute": [("good/a.txt", b"a"), (str(outside / "evil.txt"), b"evil")],
        "symlink_to_etc": [("good/a.txt", b"a"), link_info("good/etc", "/etc")],
        "symlink_inside": [link_info("good/rel", "a.txt")],
        "hardlink": [("good/a.txt", b"a"), link_info("good/passwd", "/etc/passwd", tarfile.LNKTYPE)],
        "device": [link_info("good/null", "", tarfile.CHRTYPE)],
        "fifo": [link_info("good/fifo", "", tarfile.FIFOTYPE)],
    }


@pytest.mark.parametrize("case", sorted(_unsafe_tars(Path("/x"))))
def test_safe_extract_refuses_unsafe_tar_and_leaves_nothing(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    entries = _unsafe_tars(tmp_path)[case]
    archive = work / "bad.tar"
    archive.write_bytes(tar_bytes(entries))
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(archive, work / "out")
    bad = entries[-1]
    bad_name = bad.name if isinstance(bad, tarfile.TarInfo) else bad[0]
    assert info.value.entry == bad_name and repr(bad_name) in str(info.value)
    reason = {"dotdot": "escapes", "nested_dotdot": "escapes", "absolute": "absolute path",
              "symlink_to_etc": "symbolic link", "symlink_inside": "symbolic link", "hardlink": "hard link",
              "device": "device", "fifo": "FIFO"}[case]
    assert reason in info.value.reason
    assert leftovers(work) == ["bad.tar"]
    assert leftovers(tmp_path) == ["work"]  # nothing escaped either


def test_safe_extract_tar_goes_through_the_data_filter(tmp_path):
    """tarfile's 'data' filter is applied: set-uid and group/other-write bits are dropped, ownership ignored."""
    info = tarfile.TarInfo("d/run.sh")
    info.size, info.mode, info.uid, info.uname = 2, 0o6777, 0, "root"
    archive = tmp_path / "modes.tar"
    archive.write_bytes(_tar_with(info, b"hi"))
    assert safe_extract(archive, tmp_path / "out") == ["d/run.sh"]
    mode = (tmp_path / "out" / "d" / "run.sh").stat().st_mode
    assert mode & 0o7000 == 0 and mode & 0o022 == 0 and mode & 0o700 == 0o700


def _tar_with(info: tarfile.TarInfo, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("entries", [
    [("ok.txt", b"1"), ("../evil.txt", b"evil")],
    [("/abs/evil.txt", b"evil")],
    [("..\\evil.txt", b"evil")],
], ids=["dotdot", "absolute", "backslash_dotdot"])
def test_safe_extract_refuses_unsafe_zip(tmp_path, entries):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(zip_bytes(entries))
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["bad.zip"]


def test_safe_extract_refuses_zip_symlink(tmp_path):
    link = zipfile.ZipInfo("etc")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "bad.zip"
    archive.write_bytes(zip_bytes([("ok.txt", b"1"), link]))
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["bad.zip"]


def test_safe_extract_rejects_corrupt_or_foreign_files(tmp_path):
    good = tar_bytes(TOY_ENTRIES, "w:gz")
    (tmp_path / "cut.tar.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.tar").write_bytes(b"this is not an archive at all" * 40)
    for name in ("cut.tar.gz", "text.tar"):
        with pytest.raises(ValueError, match=name):
            safe_extract(tmp_path / name, tmp_path / "out")
    assert leftovers(tmp_path) == ["cut.tar.gz", "text.tar"]
    (tmp_path / "toy.tar").write_bytes(tar_bytes(TOY_ENTRIES))
    with pytest.raises(ValueError, match="no entry under 'Nope'"):
        safe_extract(tmp_path / "toy.tar", tmp_path / "out", root="Nope")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- download datasets


def test_fetch_download_dataset_end_to_end(server, tmp_path):
    archive = tar_bytes(TOY_ENTRIES, "w:gz")
    server.files["/Task.tar.gz"] = archive
    url = f"{server.base}/Task.tar.gz"
    data_root = tmp_path / "data"
    out = fetch_dataset("toy", toy_spec(url, md5=md5(archive)), data_root, progress=False)
    assert out == data_root / "toy"
    assert (out / "dataset.json").read_bytes() == b'{"name": "toy"}'
    assert (out / "imagesTr" / "a.nii.gz").read_bytes() == b"image-a"
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["dataset"] == "toy" and marker["kind"] == "download"
    (record,) = marker["archives"]
    assert record == {"url": url, "file": "Task.tar.gz", "md5": md5(archive), "sha256": sha256(archive),
                      "verified": ["md5"]}
    assert datetime.fromisoformat(marker["fetched_at"].replace("Z", "+00:00")).tzinfo is not None
    assert {"path": "imagesTr/*.nii.gz", "matches": 2} in marker["files"]
    assert (data_root / ARCHIVE_DIR_NAME / "Task.tar.gz").read_bytes() == archive
    assert leftovers(data_root) == [ARCHIVE_DIR_NAME, "toy"]

    # second call: marker matches the spec -> nothing happens
    fetch_dataset("toy", toy_spec(url, md5=md5(archive)), data_root, progress=False)
    assert len(server.requests) == 1
    # forced re-fetch re-extracts from the kept, re-verified archive without any request
    (out / "dataset.json").write_bytes(b"tampered")
    fetch_dataset("toy", toy_spec(url, md5=md5(archive)), data_root, progress=False, force=True)
    assert len(server.requests) == 1 and (out / "dataset.json").read_bytes() == b'{"name": "toy"}'
    assert leftovers(data_root) == [ARCHIVE_DIR_NAME, "toy"]


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_fetch_download_bad_archive_leaves_no_partial_data(server, tmp_path, damage):
    archive = tar_bytes(TOY_ENTRIES)
    served = archive[:-512] if damage == "truncated" else archive[:600] + b"Z" + archive[601:]
    server.files["/Task.tar"] = served
    data_root = tmp_path / "data"
    with pytest.raises(ChecksumError) as info:
        fetch_dataset("toy", toy_spec(f"{server.base}/Task.tar", sha256=sha256(archive)), data_root,
                      progress=False)
    assert info.value.expected == sha256(archive) and info.value.actual == sha256(served)
    assert not (data_root / "toy").exists()
    assert leftovers(data_root) == [ARCHIVE_DIR_NAME]
    assert leftovers(data_root / ARCHIVE_DIR_NAME) == []  # neither the archive nor its .part


def test_fetch_download_wrong_layout_or_unsafe_archive_leaves_nothing(server, tmp_path):
    data_root = tmp_path / "data"
    short = tar_bytes(TOY_ENTRIES[:2])  # only one image: expected count 2 fails
    server.files["/short.tar"] = short
    with pytest.raises(SourceError, match=r"imagesTr/\*\.nii\.gz.*1 found, exactly 2 expected"):
        fetch_dataset("toy", toy_spec(f"{server.base}/short.tar", md5=md5(short)), data_root, progress=False)
    evil = tar_bytes(TOY_ENTRIES + [("../../evil.txt", b"evil")])
    server.files["/evil.tar"] = evil
    with pytest.raises(UnsafeArchiveError):
        fetch_dataset("toy", toy_spec(f"{server.base}/evil.tar", md5=md5(evil)), data_root, progress=False)
    assert leftovers(data_root) == [ARCHIVE_DIR_NAME]
    assert not (tmp_path / "evil.txt").exists()


def test_fetch_download_uses_an_archive_placed_by_hand_and_refuses_foreign_dirs(server, tmp_path):
    archive = tar_bytes(TOY_ENTRIES)
    data_root = tmp_path / "data"
    (data_root / ARCHIVE_DIR_NAME).mkdir(parents=True)
    (data_root / ARCHIVE_DIR_NAME / "Task.tar").write_bytes(archive)
    spec = toy_spec(f"{server.base}/Task.tar", md5=md5(archive))  # the server does not have the file
    fetch_dataset("toy", spec, data_root, progress=False)
    assert server.requests == [] and (data_root / "toy" / "imagesTr" / "b.nii.gz").exists()
    foreign = tmp_path / "data" / "other"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("user data")
    with pytest.raises(SourceError, match="not produced by a medkd fetch"):
        fetch_dataset("other", spec, data_root, progress=False)
    assert (foreign / "mine.txt").read_text() == "user data"


def test_fetch_download_error_says_where_to_place_the_archive(server, tmp_path):
    spec = toy_spec(f"{server.base}/absent.tar", md5="0" * 32)
    with pytest.raises(DownloadError) as info:
        fetch_dataset("toy", spec, tmp_path / "data", progress=False)
    assert str(tmp_path / "data" / ARCHIVE_DIR_NAME / "absent.tar") in str(info.value)
    assert "md5 " + "0" * 32 in str(info.value)
    assert leftovers(tmp_path / "data") == [ARCHIVE_DIR_NAME]


def test_fetch_unverified_archive_records_received_checksums(server, tmp_path):
    archive = tar_bytes(TOY_ENTRIES)
    server.files["/Task.tar"] = archive
    spec = toy_spec(f"{server.base}/Task.tar")
    with pytest.raises(DatasetSpecError, match="allow_unverified"):
        fetch_dataset("toy", spec, tmp_path / "data", progress=False)
    out = fetch_dataset("toy", {**spec, "allow_unverified": True}, tmp_path / "data", progress=False)
    (record,) = json.loads((out / MARKER_NAME).read_text())["archives"]
    assert record["sha256"] == sha256(archive) and record["verified"] == []


def test_fetch_refuses_embedded(tmp_path):
    spec = {"kind": "embedded", "description": "d", "licence": "l", "citation": "c", "converter": "msd",
            "experiments": [], "generator": {"n_cases": 3}}
    with pytest.raises(ValueError, match="embedded"):
        fetch_dataset("embedded", spec, tmp_path)


# -------------------------------------------------------------------------------------- manual datasets


def manual_spec(meta: bytes) -> dict:
    return {
        "kind": "manual",
        "description": "gated toy",
        "licence": "research only",
        "citation": ["Someone 2020"],
        "converter": "acdc_nifti",
        "experiments": ["kdmri"],
        "request_url": "https://example.org/request",
        "instructions": "Register, download, unzip into data/gated/.",
        "expected": [
            "training/",
            {"path": "training/patient*/Info.cfg", "count": 2, "description": "one folder per patient"},
            {"path": "meta.csv", "size": len(meta), "md5": md5(meta)},
            "labels/readme.txt",
        ],
    }


def test_manual_missing_lists_exactly_the_missing_paths(tmp_path):
    meta = b"case,group\n1,NOR\n"
    data_root = tmp_path / "data"
    with pytest.raises(ManualDatasetMissing) as info:
        fetch_dataset("gated", manual_spec(meta), data_root)
    err = info.value
    assert err.dataset == "gated"
    assert err.missing == ["training/", "training/patient*/Info.cfg", "meta.csv", "labels/readme.txt"]
    text = str(err)
    base = f"{data_root}/gated"
    for line in (f"{base}/training/   (directory)",
                 f"{base}/training/patient*/Info.cfg   (pattern: 0 found, exactly 2 expected)",
                 f"{base}/meta.csv   (file)",
                 f"{base}/labels/readme.txt   (file)"):
        assert line in text
    assert "https://example.org/request" in text and "Register, download" in text and "4 of 4" in text

    # partly present: only what is still missing is listed
    for pid in ("patient001", "patient002"):
        (data_root / "gated" / "training" / pid).mkdir(parents=True)
        (data_root / "gated" / "training" / pid / "Info.cfg").write_text("ED: 1\n")
    with pytest.raises(ManualDatasetMissing) as info:
        fetch_dataset("gated", manual_spec(meta), data_root)
    assert info.value.missing == ["meta.csv", "labels/readme.txt"]
    assert "Info.cfg" not in str(info.value) and "2 of 4" in str(info.value)
    assert not (data_root / "gated" / MARKER_NAME).exists()


def test_manual_present_is_verified_and_marked(tmp_path):
    meta = b"case,group\n1,NOR\n"
    root = tmp_path / "data" / "gated"
    for pid in ("patient001", "patient002"):
        (root / "training" / pid).mkdir(parents=True)
        (root / "training" / pid / "Info.cfg").write_text("ED: 1\n")
    (root / "labels").mkdir()
    (root / "labels" / "readme.txt").write_text("labels")
    (root / "meta.csv").write_bytes(meta)
    assert fetch_dataset("gated", manual_spec(meta), tmp_path / "data") == root
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["kind"] == "manual" and marker["request_url"] == "https://example.org/request"
    assert {"path": "meta.csv", "verified": ["size", "md5"]} in marker["files"]
    assert {"path": "training/patient*/Info.cfg", "matches": 2} in marker["files"]

    # a third patient breaks the exact count; a changed file fails its size, then its md5
    (root / "training" / "patient003").mkdir()
    (root / "training" / "patient003" / "Info.cfg").write_text("ED: 1\n")
    with pytest.raises(ManualDatasetMissing, match="3 found, exactly 2 expected"):
        fetch_dataset("gated", manual_spec(meta), tmp_path / "data", force=True)
    (root / "training" / "patient003" / "Info.cfg").unlink()
    (root / "meta.csv").write_bytes(meta + b"2,DCM\n")
    with pytest.raises(ChecksumError) as info:
        fetch_dataset("gated", manual_spec(meta), tmp_path / "data", force=True)
    assert info.value.algorithm == "size" and str(root / "meta.csv") in str(info.value)
    (root / "meta.csv").write_bytes(meta.replace(b"NOR", b"DCM"))  # same size, other bytes
    with pytest.raises(ChecksumError) as info:
        fetch_dataset("gated", manual_spec(meta), tmp_path / "data", force=True)
    assert info.value.algorithm == "md5" and info.value.expected == md5(meta)


# ------------------------------------------------------------------------------- datasets.yaml checks


def test_repository_datasets_yaml_is_valid_and_pins_monai_checksums():
    datasets = load_datasets_yaml(REPO / "config" / "datasets.yaml")
    assert {"embedded", "msd_spleen", "msd_brain_tumour", "busi", "picai", "acdc", "mrbrains",
            "calgary_campinas", "knee_hammernik", "hecktor", "brats"} <= set(datasets)
    (spleen,) = datasets["msd_spleen"]["archives"]
    assert spleen["url"] == "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task09_Spleen.tar"
    assert spleen["md5"] == "410d4a301da4e5b2f6f86ec3ddba524e"
    (brain,) = datasets["msd_brain_tumour"]["archives"]
    assert brain["md5"] == "240a19d752f0d9e9101544901065d872"
    assert datasets["msd_spleen"]["licence"] == "CC-BY-SA 4.0"
    assert "mtms" in datasets["msd_spleen"]["experiments"]
    assert datasets["embedded"]["kind"] == "embedded"
    for name in ("acdc", "mrbrains", "calgary_campinas", "knee_hammernik", "hecktor", "brats"):
        assert datasets[name]["kind"] == "manual" and datasets[name]["request_url"].startswith("https://")
    busi = datasets["busi"]
    folders = [e["path"].split("/")[0] for e in busi["expected"]]
    assert folders == ["benign"] * 2 + ["malignant"] * 2 + ["normal"] * 2
    assert sum(e["count"] for e in busi["expected"] if "_mask" not in e["path"]) == 780  # 437 + 210 + 133


def test_normalised_specs_validate_again_unchanged():
    """fetch_dataset re-validates the specs load_datasets_yaml returns: normalising is idempotent."""
    for name, spec in load_datasets_yaml(REPO / "config" / "datasets.yaml").items():
        assert validate_dataset_spec(name, spec) == spec, name


BASE = {"kind": "manual", "description": "d", "licence": "l", "citation": "c", "converter": "x",
        "experiments": [], "request_url": "https://e.org", "instructions": "i", "expected": ["a.txt"]}


@pytest.mark.parametrize("change, message", [
    ({"licence": None}, r"missing required field\(s\) \['licence'\]"),
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"kind": "torrent"}, "kind must be one of"),
    ({"request_url": "ftp://x"}, "request_url must be an http"),
    ({"expected": ["../outside.txt"]}, "must not contain '..'"),
    ({"expected": ["/etc/passwd"]}, "relative POSIX path"),
    ({"expected": [{"path": "a.txt", "count": 3}]}, "glob patterns only"),
    ({"expected": [{"path": "a/*.png", "md5": "0" * 32}]}, "single file"),
    ({"expected": [{"path": "a.txt", "md5": "xyz"}]}, "32 hexadecimal"),
    ({"expected": []}, "non-empty list"),
], ids=lambda v: str(v)[:30])
def test_spec_validation_errors_name_dataset_and_field(change, message):
    spec = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(DatasetSpecError, match=message) as info:
        validate_dataset_spec("gated", spec, where="datasets.yaml")
    assert str(info.value).startswith("datasets.yaml: dataset 'gated'")


def test_download_spec_validation():
    base = {k: v for k, v in BASE.items() if k not in ("request_url", "instructions", "expected")}
    spec = validate_dataset_spec("d", {**base, "kind": "download", "url": "https://h/x/File%201.tar?dl=1",
                                       "sha256": "A" * 64})
    assert spec["archives"] == [{"url": "https://h/x/File%201.tar?dl=1", "filename": "File 1.tar", "md5": None,
                                 "sha256": "a" * 64, "extract_to": ".", "root": None}]
    assert "url" not in spec and spec["expected"] == []
    with pytest.raises(DatasetSpecError, match="never a guessed one"):
        validate_dataset_spec("d", {**base, "kind": "download", "url": "https://h/x.tar"})
    with pytest.raises(DatasetSpecError, match="not both"):
        validate_dataset_spec("d", {**base, "kind": "download", "url": "https://h/x.tar", "md5": "0" * 32,
                                    "archives": [{"url": "https://h/y.tar", "md5": "0" * 32}]})
    with pytest.raises(DatasetSpecError, match="unique"):
        validate_dataset_spec("d", {**base, "kind": "download", "archives": [
            {"url": "https://h/a/x.tar", "md5": "0" * 32}, {"url": "https://h/b/x.tar", "md5": "1" * 32}]})
    with pytest.raises(DatasetSpecError, match="names must match"):
        validate_dataset_spec("Bad-Name", {**base, "kind": "download", "url": "https://h/x.tar",
                                           "md5": "0" * 32})


def test_load_datasets_yaml_file_errors(tmp_path):
    bad = tmp_path / "datasets.yaml"
    with pytest.raises(DatasetSpecError, match="file not found"):
        load_datasets_yaml(bad)
    bad.write_text("datasets: [unclosed")
    with pytest.raises(DatasetSpecError, match=f"{re.escape(str(bad))}: not valid YAML"):
        load_datasets_yaml(bad)
    bad.write_text("format_version: 2\ndatasets: {}\n")
    with pytest.raises(DatasetSpecError, match="format_version must be 1"):
        load_datasets_yaml(bad)
    bad.write_text("format_version: 1\ndatasets:\n  x: {kind: manual}\n")
    with pytest.raises(DatasetSpecError, match=rf"{re.escape(str(bad))}: dataset 'x': missing required"):
        load_datasets_yaml(bad)
