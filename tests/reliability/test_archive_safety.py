"""`download` from a hostile mirror: an archive whose members would not stay plain files inside the target
folder is refused as a whole, with the members named, and nothing is written anywhere.

The mirror is a folder served through `file://` URLs (`--base-url`), holding the archive and the record
metadata with the archive's own (matching) MD5, as a hostile mirror would: the checksums prove nothing.
Each case runs the real command.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

MAIN = str(PROJECT_ROOT / "source" / "main.py")
GOOD = "fan/train/section_00_source_train_normal_0001_a.wav"


def _special(name: str, mode: int) -> zipfile.ZipInfo:
    """A member made on Unix whose st_mode says what it is (a link, a device file)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = mode << 16
    return info


def publish(mirror: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    """A mirror folder with one archive `dev_fan.zip` of `members` and its record; returns the catalog."""
    archive = mirror / "records" / "1" / "files" / "dev_fan.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    data = archive.read_bytes()
    record = mirror / "api" / "records" / "1"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"files": [{"key": "dev_fan.zip", "size": len(data),
                                             "checksum": "md5:" + hashlib.md5(data).hexdigest()}]}))
    catalog = mirror.parent / "catalog.json"
    catalog.write_text(json.dumps({"parts": {"dev": "dev_data"}, "datasets": {"toy": {"records": {}, "archives": [
        {"part": "dev", "machine": "fan", "file": "dev_fan.zip", "record": "1"}]}}}))
    return catalog


def download(catalog: Path, mirror: Path, raw: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MAIN, "download", "toy", "--dev", "--catalog", str(catalog),
                           "--base-url", mirror.as_uri(), "--raw-dir", str(raw), "--quiet", "--retries", "0"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)


def files_under(folder: Path) -> list[str]:
    return sorted(str(Path(root, name).relative_to(folder)) for root, dirs, names in os.walk(folder)
                  for name in [*names, *(d for d in dirs if Path(root, d).is_symlink())])


@pytest.mark.parametrize("kind", ["absolute", "dot-dot", "symlink", "device", "windows"])
def test_unsafe_member_refuses_the_archive(tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside" / "planted.wav"
    bad = {"absolute": (str(outside), b"evil"),
           "dot-dot": ("fan/train/../../../../outside/planted.wav", b"evil"),
           "symlink": (_special("fan/train/link.wav", stat.S_IFLNK | 0o777), str(outside).encode()),
           "device": (_special("fan/train/tty.wav", stat.S_IFCHR | 0o666), b""),
           "windows": ("fan\\..\\..\\outside\\planted.wav", b"evil")}[kind]
    mirror = tmp_path / "mirror"
    catalog = publish(mirror, [(GOOD, b"x" * 64), bad])
    raw = tmp_path / "raw"
    done = download(catalog, mirror, raw)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "verified, unpacked" not in done.stdout
    name = bad[0].filename if isinstance(bad[0], zipfile.ZipInfo) else bad[0]
    assert done.stderr.startswith("error: dev_fan.zip: refused") and repr(name) in done.stderr, done.stderr
    assert not outside.parent.exists()  # nothing landed outside the target folder
    assert files_under(raw) == []  # and nothing inside it: no machine folder, no staging, no marker, no archive
    assert files_under(tmp_path) == sorted(["catalog.json", "mirror/api/records/1",
                                            "mirror/records/1/files/dev_fan.zip"])


@pytest.mark.filterwarnings("ignore:Duplicate name")  # the duplicate is the point
def test_every_unsafe_member_is_named(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    catalog = publish(mirror, [(GOOD, b"x"), (str(tmp_path / "abs.wav"), b"e"), ("../up.wav", b"e"),
                               (_special("fan/test/l.wav", stat.S_IFLNK | 0o777), b"/etc/passwd"),
                               ("fan/train/section_00_source_train_normal_0001_a.wav", b"twice")])
    done = download(catalog, mirror, tmp_path / "raw")
    assert done.returncode == 2
    assert "refused, 4 member(s)" in done.stderr
    for reason in ("an absolute path", "a path with '..'", "a symbolic link", "a second member unpacked to"):
        assert reason in done.stderr, done.stderr
    assert not (tmp_path / "abs.wav").exists() and not (tmp_path / "up.wav").exists()


def test_a_safe_archive_still_unpacks(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    catalog = publish(mirror, [(GOOD, b"x" * 64), ("fan/", b""), ("__MACOSX/fan/._x", b"junk")])
    raw = tmp_path / "raw"
    done = download(catalog, mirror, raw)
    assert done.returncode == 0, done.stderr
    assert (raw / "toy" / "dev_data" / "raw" / GOOD).read_bytes() == b"x" * 64
