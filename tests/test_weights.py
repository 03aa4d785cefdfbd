"""Checkpoint specs, cache resolution and the downloader, against a local HTTP server."""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mobile_sam import weights
from mobile_sam.weights import (
    CHECKPOINTS,
    CheckpointSpec,
    WeightsChecksumError,
    WeightsDownloadError,
    cache_dir,
    download_checkpoint,
    ensure_checkpoint,
    list_cached,
    resolve_checkpoint,
    variant_for,
)

NAME = "fake_ckpt.pt"


class FakeServer:
    """A 127.0.0.1 server for one payload; the first path segment picks a behaviour.

    /ok/...      serves the payload, honouring ``Range: bytes=N-``
    /cut/...     first request: announces the full length, sends half, closes; then like /ok
    /norange/... ignores Range and always answers 200 with the whole payload
    /wrong/...   serves other bytes of the same length
    /slow/...    waits (until the test ends) before answering
    anything else: 404
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._cut_done = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Range")))
                kind = self.path.split("/")[1]
                body = server.payload
                if kind == "slow":
                    server.release.wait(10)
                    return
                if kind == "wrong":
                    body = bytes(255 - b for b in body)
                if kind == "cut":
                    with server._lock:
                        first, server._cut_done = not server._cut_done, True
                    if first:
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                if kind not in ("ok", "cut", "norange", "wrong"):
                    self.send_error(404)
                    return
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and kind != "norange":
                    start = int(match.group(1))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"
                    )
                    body = body[start:]
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except ConnectionError:
                    pass  # the client stopped reading (e.g. it refused the announced size)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, kind: str) -> str:
        return f"{self.base}/{kind}/{NAME}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours *_proxy variables; the test server is local.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def payload() -> bytes:
    # Not a multiple of the 1 MiB chunk, and large enough to be cut in half.
    return np.random.default_rng(0).integers(0, 256, 3 * 1024 * 1024 + 123, np.uint8).tobytes()


@pytest.fixture
def server(payload: bytes) -> Iterator[FakeServer]:
    srv = FakeServer(payload)
    yield srv
    srv.close()


def make_spec(payload: bytes, *urls: str) -> CheckpointSpec:
    return CheckpointSpec(
        variant="vit_t",
        file_name=NAME,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        urls=tuple(urls),
    )


def test_known_checkpoints_are_data() -> None:
    assert set(CHECKPOINTS) == {"vit_t", "vit_b", "vit_l", "vit_h"}
    t = CHECKPOINTS["vit_t"]
    assert (t.file_name, t.size) == ("mobile_sam.pt", 40_728_226)
    assert t.sha256 == "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
    assert t.urls[0].startswith("https://github.com/ChaoningZhang/MobileSAM/")
    assert t.urls[1].startswith("https://huggingface.co/")
    assert CHECKPOINTS["vit_h"].urls == (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    )
    for variant, spec in CHECKPOINTS.items():
        assert spec.variant == variant
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.size = 1  # type: ignore[misc]


def test_variant_for() -> None:
    assert variant_for("mobile_sam.pt") == "vit_t"
    assert variant_for("vit_t") == "vit_t"
    assert variant_for("sam_vit_b_01ec64.pth") == "vit_b"
    assert variant_for(Path("/somewhere/sam_vit_h_4b8939.pth")) == "vit_h"
    with pytest.raises(ValueError, match=r"unknown checkpoint name 'resnet50'.*mobile_sam\.pt"):
        variant_for("resnet50")


def test_fresh_download(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    path = download_checkpoint(make_spec(payload, server.url("ok")), tmp_path, progress=False)
    assert path == tmp_path / NAME
    assert path.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]
    assert server.requests == [(f"/ok/{NAME}", None)]


def test_progress_bar_silent_when_off(
    server: FakeServer, payload: bytes, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    download_checkpoint(make_spec(payload, server.url("ok")), tmp_path, progress=False)
    assert capfd.readouterr().err == ""
    download_checkpoint(make_spec(payload, server.url("ok")), tmp_path / "b", progress=True)
    assert NAME in capfd.readouterr().err


def test_resume_after_connection_cut(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    path = download_checkpoint(make_spec(payload, server.url("cut")), tmp_path, progress=False)
    assert path.read_bytes() == payload
    assert not (tmp_path / f"{NAME}.part").exists()
    assert len(server.requests) == 2
    assert server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={len(payload) // 2}-"


def test_resume_partial_file_from_earlier_run(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(payload[:1000])
    path = download_checkpoint(make_spec(payload, server.url("ok")), tmp_path, progress=False)
    assert path.read_bytes() == payload
    assert server.requests == [(f"/ok/{NAME}", "bytes=1000-")]


def test_server_ignoring_range_restarts_from_zero(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(b"\0" * 1000)  # would corrupt if appended to
    path = download_checkpoint(make_spec(payload, server.url("norange")), tmp_path, progress=False)
    assert path.read_bytes() == payload
    assert server.requests == [(f"/norange/{NAME}", "bytes=1000-")]


def test_stale_partial_file_is_redownloaded(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    # A wrong prefix gives a hash mismatch after resuming: one fresh try from zero.
    (tmp_path / f"{NAME}.part").write_bytes(b"\0" * 1000)
    path = download_checkpoint(make_spec(payload, server.url("ok")), tmp_path, progress=False)
    assert path.read_bytes() == payload
    assert [r[1] for r in server.requests] == ["bytes=1000-", None]


def test_wrong_sha256_keeps_nothing(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    spec = make_spec(payload, server.url("wrong"))
    with pytest.raises(WeightsChecksumError) as info:
        download_checkpoint(spec, tmp_path, progress=False)
    message = str(info.value)
    got = hashlib.sha256(bytes(255 - b for b in payload)).hexdigest()
    assert f"sha256 mismatch: expected {spec.sha256}, got {got}" in message
    assert server.url("wrong") in message
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_announced_by_server(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    spec = dataclasses.replace(make_spec(payload, server.url("ok")), size=len(payload) + 5)
    with pytest.raises(WeightsChecksumError, match=rf"expected {len(payload) + 5} bytes"):
        download_checkpoint(spec, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_404_names_url_and_manual_path(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.url("missing")
    with pytest.raises(WeightsDownloadError) as info:
        download_checkpoint(make_spec(payload, url), tmp_path, progress=False)
    message = str(info.value)
    assert not isinstance(info.value, WeightsChecksumError)
    assert "\n" not in message
    assert f"{url}: HTTP 404" in message
    assert f"save it as {tmp_path / NAME}" in message
    assert list(tmp_path.iterdir()) == []


def test_falls_back_to_next_url(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    spec = make_spec(payload, server.url("missing"), server.url("ok"))
    assert download_checkpoint(spec, tmp_path, progress=False).read_bytes() == payload
    assert [r[0].split("/")[1] for r in server.requests] == ["missing", "ok"]


def test_timeout_is_a_clear_error(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    url = server.url("slow")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        download_checkpoint(make_spec(payload, url), tmp_path, progress=False, timeout=0.3)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert f"{url}: timed out" in message
    assert str(tmp_path / NAME) in message


def test_no_server_is_a_clear_error(payload: bytes, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{NAME}"
    with pytest.raises(WeightsDownloadError, match=re.escape(url)) as info:
        download_checkpoint(make_spec(payload, url), tmp_path, progress=False, timeout=2)
    assert "Connection refused" in str(info.value)


def test_cache_hit_makes_no_request(server: FakeServer, payload: bytes, tmp_path: Path) -> None:
    spec = make_spec(payload, server.url("ok"))
    first = ensure_checkpoint(spec, tmp_path, progress=False)
    assert len(server.requests) == 1
    again = ensure_checkpoint(spec, tmp_path, progress=False, verify_hash=True)
    assert again == first
    assert len(server.requests) == 1


def test_bad_cached_file_is_reported_not_overwritten(
    server: FakeServer, payload: bytes, tmp_path: Path
) -> None:
    spec = make_spec(payload, server.url("ok"))
    cached = tmp_path / NAME
    cached.write_bytes(payload[:-1])
    with pytest.raises(WeightsChecksumError, match=rf"expected {len(payload)} bytes, got"):
        ensure_checkpoint(spec, tmp_path, progress=False)
    cached.write_bytes(b"\1" + payload[1:])
    assert ensure_checkpoint(spec, tmp_path, progress=False) == cached  # size only by default
    with pytest.raises(WeightsChecksumError, match="wrong sha256"):
        ensure_checkpoint(spec, tmp_path, progress=False, verify_hash=True)
    assert server.requests == []


def test_download_off_says_where_to_put_the_file(payload: bytes, tmp_path: Path) -> None:
    spec = make_spec(payload, "http://127.0.0.1:9/never")
    with pytest.raises(FileNotFoundError, match=re.escape(f"save it as {tmp_path / NAME}")):
        ensure_checkpoint(spec, tmp_path, download=False)


def test_cache_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOBILE_SAM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "home"
    monkeypatch.delenv("MOBILE_SAM_HOME")
    assert cache_dir() == tmp_path / "xdg" / "mobile_sam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "mobile_sam"


def test_resolve_known_name_downloads_into_mobile_sam_home(
    server: FakeServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MOBILE_SAM_HOME", str(home))
    fake = dataclasses.replace(
        make_spec(payload, server.url("ok")), file_name="mobile_sam.pt"
    )
    monkeypatch.setitem(weights.CHECKPOINTS, "vit_t", fake)
    path = resolve_checkpoint("mobile_sam.pt", progress=False)
    assert path == home / "mobile_sam.pt"
    assert path.read_bytes() == payload
    assert resolve_checkpoint("vit_t", progress=False) == path
    assert len(server.requests) == 1
    assert [(s.variant, p) for s, p in list_cached() if p is not None] == [("vit_t", path)]


def test_resolve_existing_path_is_used_as_is(tmp_path: Path) -> None:
    own = tmp_path / "my_finetune.bin"
    own.write_bytes(b"x")
    assert resolve_checkpoint(own) == own
    assert resolve_checkpoint(str(own)) == own


def test_resolve_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint("vit_x.pt", download=False)
    message = str(info.value)
    assert "'vit_x.pt'" in message and "does not exist" in message
    for spec in CHECKPOINTS.values():
        assert spec.variant in message and spec.file_name in message


def test_resolve_missing_path_with_folders_is_not_downloaded(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "mobile_sam.pt"
    hint = "does not exist (pass just 'mobile_sam.pt' to use the download cache"
    with pytest.raises(FileNotFoundError, match=re.escape(hint)):
        resolve_checkpoint(missing)


def test_list_cached_empty(tmp_path: Path) -> None:
    listed = list_cached(tmp_path)
    assert [s.variant for s, _ in listed] == ["vit_t", "vit_b", "vit_l", "vit_h"]
    assert all(p is None for _, p in listed)
