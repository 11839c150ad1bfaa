"""`download` against a local HTTP server on 127.0.0.1 (started and stopped here; never the real network)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asd.dataset.download import Archive, DownloadError, download_dataset, load_catalog, select_archives
from asd.dataset.layout import scan_raw_root


def make_zip(machine: str, split: str, n: int = 3, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for i in range(n):
            name = f"section_00_source_train_normal_{i:04d}_a_1.wav" if split == "train" \
                else f"section_00_{i:04d}.wav"
            zf.writestr(f"{prefix}{machine}/{split}/{name}", bytes([i]) * 4000)
        zf.writestr(f"{prefix}{machine}/attributes_00.csv", "file_name\n")
    return buffer.getvalue()


class Server:
    """Serves `files` ({url path: bytes}) and the Zenodo-like record metadata in `records`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.records: dict[str, dict] = {}
        self.no_ranges: set[str] = set()
        self.cut_once: set[str] = set()  # first GET of these paths stops half-way
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith("/api/records/"):
                    body = json.dumps(server.records.get(self.path.rsplit("/", 1)[1], {"files": []})).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and self.path not in server.no_ranges:
                    start = int(range_header.split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut_once:
                    server.cut_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def publish(self, record: str, name: str, data: bytes, md5: str | None = None) -> None:
        self.files[f"/records/{record}/files/{name}"] = data
        entry = {"key": name, "size": len(data), "checksum": f"md5:{md5 or hashlib.md5(data).hexdigest()}"}
        self.records.setdefault(record, {"files": []})["files"].append(entry)


@pytest.fixture()
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


CATALOG = {"parts": {"dev": "dev_data", "eval_train": "eval_data", "eval_test": "eval_data"}, "datasets": {}}


def archives(*specs) -> list[Archive]:
    return [Archive("toy2099", part, machine, file, record) for part, machine, file, record in specs]


def run(server, items, raw, **kw):
    return download_dataset(items, raw, CATALOG, base_url=server.url, retries=2, backoff=0.01,
                            show_progress=False, log=lambda line: None, **kw)


def test_catalog_lists_official_records():
    catalog = load_catalog()
    assert {"dcase2020t2", "dcase2023t2", "dcase2025t2"} <= set(catalog["datasets"])
    chosen = select_archives(catalog, "dcase2023t2", dev=False, eval_=True, machines=["bandsaw"])
    assert [a.file for a in chosen] == ["eval_data_bandsaw_train.zip", "eval_data_bandsaw_test.zip"]
    assert all(a.record in ("7830345", "7860847") for a in chosen)
    for spec in catalog["datasets"].values():
        assert all(r["source"] for r in spec["records"].values())  # every record says where it came from
    with pytest.raises(DownloadError, match="no machine type"):
        select_archives(catalog, "dcase2023t2", dev=True, eval_=False, machines=["bandsaw"])


def test_eval_archives_merge_into_the_prep_layout_and_second_run_does_nothing(server, tmp_path):
    server.publish("1", "eval_data_fan_train.zip", make_zip("fan", "train"))
    server.publish("2", "eval_data_fan_test.zip", make_zip("fan", "test", prefix="eval_data/"))
    items = archives(("eval_train", "fan", "eval_data_fan_train.zip", "1"),
                     ("eval_test", "fan", "eval_data_fan_test.zip", "2"))
    raw = tmp_path / "raw"
    assert run(server, items, raw) == {"eval_data_fan_train.zip": "done", "eval_data_fan_test.zip": "done"}
    machine = raw / "toy2099" / "eval_data" / "raw" / "fan"
    assert len(list((machine / "train").glob("*.wav"))) == 3 and len(list((machine / "test").glob("*.wav"))) == 3
    manifest, _ = scan_raw_root(raw)
    assert set(manifest["dataset"]) == {"toy2099-eval"} and set(manifest["split_folder"]) == {"train", "test"}
    assert not list(raw.rglob("*.partial")) and not list(raw.rglob(".unpack-*"))
    n_requests = len(server.requests)
    assert set(run(server, items, raw).values()) == {"up to date"}
    assert len(server.requests) == n_requests  # checked locally, nothing fetched


def test_wrong_checksum_unpacks_nothing(server, tmp_path):
    server.publish("1", "dev_fan.zip", make_zip("fan", "train"), md5="0" * 32)
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match="checksum failed.*MD5"):
        run(server, archives(("dev", "fan", "dev_fan.zip", "1")), raw)
    assert not (raw / "toy2099" / "dev_data" / "raw" / "fan").exists()
    assert not list(raw.rglob("*.zip"))


def test_corrupt_member_crc_unpacks_nothing(server, tmp_path):
    data = bytearray(make_zip("fan", "train"))
    data[200] ^= 0xFF  # inside the first member's bytes: the size is right, the CRC is not
    server.publish("1", "dev_fan.zip", bytes(data))
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match="corrupt zip"):
        run(server, archives(("dev", "fan", "dev_fan.zip", "1")), raw)
    assert not (raw / "toy2099" / "dev_data" / "raw" / "fan").exists()
    assert not list(raw.rglob(".unpack-*"))


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    data = make_zip("fan", "train", n=20)
    server.publish("1", "dev_fan.zip", data)
    server.cut_once.add("/records/1/files/dev_fan.zip")
    run(server, archives(("dev", "fan", "dev_fan.zip", "1")), tmp_path / "raw")
    gets = [r for p, r in server.requests if p.endswith("dev_fan.zip")]
    assert gets[0] is None and gets[1] == f"bytes={len(data) // 2}-"
    assert len(list((tmp_path / "raw" / "toy2099" / "dev_data" / "raw" / "fan" / "train").glob("*.wav"))) == 20


def test_server_without_ranges_restarts_from_zero(server, tmp_path):
    server.publish("1", "dev_fan.zip", make_zip("fan", "train", n=20))
    path = "/records/1/files/dev_fan.zip"
    server.cut_once.add(path)
    server.no_ranges.add(path)
    run(server, archives(("dev", "fan", "dev_fan.zip", "1")), tmp_path / "raw")
    assert [r for p, r in server.requests if p == path][1] is not None  # asked for a range, got the whole file
    assert len(list((tmp_path / "raw" / "toy2099" / "dev_data" / "raw" / "fan" / "train").glob("*.wav"))) == 20


def test_unreachable_network_says_so(tmp_path):
    items = archives(("dev", "fan", "dev_fan.zip", "1"))
    with pytest.raises(DownloadError, match="cannot reach"):
        download_dataset(items, tmp_path, CATALOG, base_url="http://127.0.0.1:9", retries=1, backoff=0.01,
                         show_progress=False, log=lambda line: None)
    assert not (tmp_path / "toy2099" / "dev_data" / "raw" / "fan").exists()


def test_missing_file_is_a_clear_error(server, tmp_path):
    server.records["1"] = {"files": []}
    with pytest.raises(DownloadError, match="HTTP 404"):
        run(server, archives(("dev", "fan", "dev_fan.zip", "1")), Path(tmp_path))


def test_download_command(server, tmp_path):
    from click.testing import CliRunner

    from asd.cli import main

    server.publish("7", "dev_fan.zip", make_zip("fan", "train"))
    server.publish("8", "dev_valve.zip", make_zip("valve", "train"), md5="f" * 32)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({**CATALOG, "datasets": {"toy2099": {"records": {}, "archives": [
        {"part": "dev", "machine": m, "file": f"dev_{m}.zip", "record": r} for m, r in (("fan", "7"),
                                                                                          ("valve", "8"))]}}}))
    args = ["download", "toy2099", "--dev", "--catalog", str(catalog), "--base-url", server.url, "--quiet",
            "--raw-dir", str(tmp_path / "raw"), "--retries", "0"]
    result = CliRunner().invoke(main, [*args, "--machines", "fan"])
    assert result.exit_code == 0, result.output
    assert "1 archive(s) unpacked" in result.output
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "dev_valve.zip: checksum failed" in result.output
    assert not (tmp_path / "raw" / "toy2099" / "dev_data" / "raw" / "valve").exists()
    result = CliRunner().invoke(main, [*args, "--machines", "pump"])
    assert result.exit_code == 2 and "no machine type(s) ['pump']" in result.output
