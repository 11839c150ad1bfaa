"""`download`: fetch the official DCASE Task 2 archives, verify them, unpack them where data_prep looks.

    data/raw/<dataset>/<dev_data|eval_data>/raw/<machine>/{train,test,...}

The archive list is data (`dcase_archives.json`, one entry per zip, each with the official record it comes
from). Per archive: resumable download (HTTP range requests) into `<raw>/.downloads/`, retries with
backoff, size and MD5 checked against the list or, where the list has none, against the Zenodo record's
own metadata; then every zip member is extracted into a staging folder with its CRC checked, and only a
fully verified archive is moved into place (a folder rename where the target does not exist yet). A
marker file records finished archives, so a second run checks and does nothing.

The checksums come from the same place as the archive, so they prove nothing against a hostile mirror:
before a single byte is unpacked, every member is checked to be a plain file or folder whose path stays
inside the target folder (`member_problems`). An absolute name, a `..` part, a Windows path, a symbolic
link, a device file, a fifo or a name that appears twice makes the whole archive refused, with the
members named; nothing is unpacked and the archive is deleted. (Only zip archives are handled.)
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from asd.errors import AsdError

DEFAULT_BASE_URL = "https://zenodo.org"
CHUNK = 1 << 20
MARKER = ".asd_download.json"
PARTIAL = ".partial"


class DownloadError(AsdError):
    """A download that could not be completed or verified; the message says what to do."""


@dataclass(frozen=True)
class Archive:
    """One official zip: where it comes from, what it holds, how to check it."""

    dataset: str
    part: str  # dev | eval_train | eval_test
    machine: str
    file: str
    record: str
    md5: str | None = None
    size: int | None = None

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/records/{self.record}/files/{self.file}"

    def folder(self, raw_dir: Path, parts: dict[str, str]) -> Path:
        """<raw>/<dataset>/<dev_data|eval_data>/raw: the folder the machine folders land in."""
        return Path(raw_dir) / self.dataset / parts[self.part] / "raw"


def load_catalog(path: Path | None = None) -> dict:
    """The archive list shipped with the package (or another JSON file of the same shape)."""
    shipped = resources.files("asd.dataset").joinpath("dcase_archives.json")
    text = Path(path).read_text() if path else shipped.read_text()
    return json.loads(text)


def select_archives(catalog: dict, dataset: str, dev: bool, eval_: bool,
                    machines: list[str] | None) -> list[Archive]:
    """Archives of one dataset, filtered by part and machine type; raises DownloadError on unknown names."""
    datasets = catalog["datasets"]
    if dataset not in datasets:
        raise DownloadError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(datasets))}")
    parts = ({"dev"} if dev else set()) | ({"eval_train", "eval_test"} if eval_ else set())
    if not parts:
        parts = {"dev", "eval_train", "eval_test"}
    entries = [Archive(dataset=dataset, **a) for a in datasets[dataset]["archives"] if a["part"] in parts]
    known = sorted({a.machine for a in entries})
    unknown = sorted(set(machines or []) - set(known))
    if unknown:
        raise DownloadError(f"{dataset} has no machine type(s) {unknown} in the selected parts; known: {known}")
    return [a for a in entries if not machines or a.machine in machines]


# ---------------------------------------------------------------- HTTP ----------------------------------------

def _open(url: str, start: int = 0, timeout: float = 30.0):
    request = urllib.request.Request(url, headers={"User-Agent": "asd-download/1"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)


def record_metadata(base_url: str, record: str, retries: int = 3, backoff: float = 1.0) -> dict[str, dict]:
    """{file name: {"size": int, "md5": str|None}} from the record's public metadata (Zenodo API)."""
    url = f"{base_url.rstrip('/')}/api/records/{record}"
    data = _with_retries(lambda: json.loads(_open(url).read()), url, retries, backoff)
    files = data.get("files", [])
    if isinstance(files, dict):  # some API versions nest the list under "entries"
        files = list(files.get("entries", {}).values()) if "entries" in files else []
    out = {}
    for entry in files:
        checksum = entry.get("checksum", "") or ""
        out[entry["key"]] = {"size": entry.get("size"),
                             "md5": checksum.split(":", 1)[1] if checksum.startswith("md5:") else None}
    return out


def _with_retries(action: Callable, url: str, retries: int, backoff: float):
    for attempt in range(retries + 1):
        try:
            return action()
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:  # 4xx will not heal by retrying
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            if attempt == retries:
                raise DownloadError(f"cannot reach {url} ({getattr(err, 'reason', err)}) after {retries + 1} "
                                    "tries; check the network and rerun (a partial download resumes)") from err
        time.sleep(backoff * 2 ** attempt)
    raise AssertionError("unreachable")


def fetch(url: str, dest: Path, expected_size: int | None, retries: int = 4, backoff: float = 1.0,
          show_progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Download `url` to `dest`, resuming `dest.partial` with range requests; returns `dest`.

    A server that ignores the range (answers 200 instead of 206) makes the download start again from zero.
    """
    partial = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=expected_size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
               disable=not show_progress, initial=partial.stat().st_size if partial.exists() else 0)
    try:
        for attempt in range(retries + 1):
            have = partial.stat().st_size if partial.exists() else 0
            if expected_size is not None and have == expected_size:
                break
            try:
                with _open(url, start=have) as response:
                    if have and response.status != 206:
                        log(f"  {dest.name}: the server ignored the range request; starting again from 0")
                        have = 0
                        bar.reset(total=expected_size)
                    with open(partial, "ab" if have else "wb") as out:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            bar.update(len(chunk))
                    length = response.headers.get("Content-Length")
                done = partial.stat().st_size
                if length is not None and done != have + int(length):
                    raise OSError(f"connection closed after {done - have} of {length} bytes")
                break
            except urllib.error.HTTPError as err:
                if err.code == 416 and have and (expected_size is None or have == expected_size):
                    break
                if err.code < 500 or attempt == retries:
                    raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                if attempt == retries:
                    raise DownloadError(
                        f"cannot download {url} ({getattr(err, 'reason', err)}) after {retries + 1} tries; "
                        f"{partial.stat().st_size if partial.exists() else 0} bytes kept in {partial}: "
                        "rerun to resume") from err
                log(f"  {dest.name}: {getattr(err, 'reason', err)}; retrying in {backoff * 2 ** attempt:g} s")
            time.sleep(backoff * 2 ** attempt)
    finally:
        bar.close()
    os.replace(partial, dest)
    return dest


# --------------------------------------------------------- verify and unpack -----------------------------------

def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: Path, size: int | None, md5: str | None) -> None:
    """Size and MD5 (where known) of a downloaded archive; a mismatch deletes it and raises DownloadError."""
    actual = path.stat().st_size
    problem = None
    if size is not None and actual != size:
        problem = f"size {actual} bytes, the record says {size}"
    elif md5 is not None and (digest := md5_of(path)) != md5:
        problem = f"MD5 {digest}, the record says {md5}"
    if problem:
        path.unlink()
        raise DownloadError(f"{path.name}: checksum failed ({problem}); the file was deleted and nothing was "
                            "unpacked. Rerun to download it again; if it fails again the mirror is corrupt.")


_UNIX = 3  # ZipInfo.create_system of archives made on Unix: the high 16 bits of external_attr are st_mode


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be unpacked, or None for a plain file or folder with a relative name."""
    name = info.filename
    if info.create_system == _UNIX and (kind := stat.S_IFMT(info.external_attr >> 16)):
        if stat.S_ISLNK(kind):
            return "a symbolic link"
        if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
            return "a device file, fifo or socket"
    if "\\" in name:
        return "a Windows path (backslashes)"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a path with '..' (it would land outside the target folder)"
    return None


def member_problems(infos: list[zipfile.ZipInfo], machine: str) -> list[str]:
    """`name: reason` for every member that must not be unpacked (empty when the archive is safe)."""
    problems, seen = [], set()
    for info in infos:
        problem = _member_problem(info)
        if problem is None and (target := _member_target(info.filename, machine)) is not None:
            if target in seen:
                problem = f"a second member unpacked to {target}"
            seen.add(target)
        if problem is not None:
            problems.append(f"{info.filename!r}: {problem}")
    return problems


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` resolves to a place inside `folder` (symbolic links followed)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _member_target(name: str, machine: str) -> PurePosixPath | None:
    """Where a zip member goes, relative to the <raw> folder: <machine>/<rest>; None for folders and junk.
    Only called on names `_member_problem` accepted (relative, no `..`)."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or name.endswith("/") or parts[0] == "__MACOSX":
        return None
    # An archive holding train/ and test/ directly gets the machine folder added.
    parts = parts[parts.index(machine):] if machine in parts[:-1] else [machine, *parts]
    return PurePosixPath(*parts)


def unpack(archive_path: Path, machine: str, folder: Path) -> list[str]:
    """Extract into a staging folder (CRC of every member checked while reading), then move into `folder`.

    Returns the top-level entries it placed under `folder/<machine>`. A bad member removes the staging
    folder and raises DownloadError: nothing is half unpacked. A member that is not a plain file or folder
    inside `folder` (`member_problems`) refuses the whole archive before anything is written.
    """
    staging = folder / f".unpack-{archive_path.stem}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive_path) as zf:
            infos = zf.infolist()
            refused = member_problems(infos, machine)
            if refused:
                archive_path.unlink(missing_ok=True)
                shown = "; ".join(refused[:5]) + (f"; and {len(refused) - 5} more" if len(refused) > 5 else "")
                raise DownloadError(
                    f"{archive_path.name}: refused, {len(refused)} member(s) would not stay plain files inside "
                    f"{folder} ({shown}). Nothing was unpacked and the archive was deleted; the mirror "
                    "(--base-url) is not to be trusted.")
            for info in infos:
                target = _member_target(info.filename, machine)
                if target is None:
                    continue
                # "<machine>/train.partial/...": no folder data_prep would read (it looks for train/, test/)
                # exists until the verified folder is renamed into place.
                top, *rest = target.parts[1:]
                out = staging.joinpath(target.parts[0], top + PARTIAL, *rest)
                if not _inside(out, staging):  # a second line of defence: the path as the OS resolves it
                    raise DownloadError(f"{archive_path.name}: member {info.filename!r} resolves to {out}, "
                                        f"outside {staging}; nothing was unpacked")
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:  # zipfile checks the CRC at the end
                    shutil.copyfileobj(src, dst, CHUNK)
    except DownloadError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        archive_path.unlink(missing_ok=True)
        raise DownloadError(f"{archive_path.name}: corrupt zip ({err}); the file was deleted and nothing was "
                            "unpacked. Rerun to download it again.") from err
    placed = []
    for machine_dir in sorted(p for p in staging.iterdir()):
        for entry in sorted(machine_dir.iterdir()):
            final = folder / machine_dir.name / entry.name[: -len(PARTIAL)]
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.exists() or entry.is_file():
                os.replace(entry, final)  # one rename: the folder appears complete or not at all
            else:  # both archives of the eval set bring this folder: merge file by file
                for item in sorted(entry.rglob("*")):
                    if item.is_file():
                        dest = final / item.relative_to(entry)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(item, dest)
            placed.append(f"{machine_dir.name}/{final.name}")
    shutil.rmtree(staging, ignore_errors=True)
    return placed


# ------------------------------------------------------------- the command ------------------------------------

def _read_marker(folder: Path) -> dict:
    path = folder / MARKER
    return json.loads(path.read_text()) if path.exists() else {}


def _write_marker(folder: Path, marker: dict) -> None:
    tmp = folder / (MARKER + ".partial")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, folder / MARKER)


def download_dataset(archives: list[Archive], raw_dir: Path, catalog: dict, base_url: str = DEFAULT_BASE_URL,
                     keep_archives: bool = False, retries: int = 4, backoff: float = 1.0,
                     show_progress: bool = True, log: Callable[[str], None] = print) -> dict[str, str]:
    """Download, verify and unpack each archive not already done; returns {file: "done"|"up to date"}."""
    raw_dir = Path(raw_dir)
    parts = catalog["parts"]
    metadata: dict[str, dict] = {}
    status = {}
    for archive in archives:
        folder = archive.folder(raw_dir, parts)
        folder.mkdir(parents=True, exist_ok=True)
        marker = _read_marker(folder)
        done = marker.get(archive.file)
        if done and all((folder / p).exists() for p in done["placed"]):
            status[archive.file] = "up to date"
            continue
        size, md5 = archive.size, archive.md5
        if size is None or md5 is None:
            if archive.record not in metadata:
                try:
                    metadata[archive.record] = record_metadata(base_url, archive.record, retries, backoff)
                except DownloadError as err:
                    raise DownloadError(f"{err}. Nothing was unpacked.") from err
            entry = metadata[archive.record].get(archive.file, {})
            size = size if size is not None else entry.get("size")
            md5 = md5 if md5 is not None else entry.get("md5")
        if md5 is None:
            log(f"  {archive.file}: no MD5 in the list or the record; checking size and every member's CRC only")
        path = raw_dir / ".downloads" / archive.dataset / archive.file
        if not path.exists():
            fetch(archive.url(base_url), path, size, retries, backoff, show_progress, log)
        verify_archive(path, size, md5)
        placed = unpack(path, archive.machine, folder)
        marker[archive.file] = {"record": archive.record, "md5": md5 or md5_of(path), "size": path.stat().st_size,
                                "placed": placed, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_marker(folder, marker)
        if not keep_archives:
            path.unlink()
        status[archive.file] = "done"
        log(f"  {archive.file}: verified, unpacked into {folder}")
    return status
