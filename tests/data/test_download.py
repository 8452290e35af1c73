"""Downloads against a local HTTP server on 127.0.0.1 serving files the tests generate.

No other address is ever contacted: every connection goes through a guard that refuses anything
but 127.0.0.1, and the specs are the real ones with their URLs pointed at the local server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cnnlab.data import download
from cnnlab.data.catalog import CIFAR10, FASHION_MNIST, RemoteFile
from cnnlab.data.download import ensure_files, format_progress, missing_files
from cnnlab.errors import DataError, DownloadError, MissingDataError

IDX_FILES = [name for files in FASHION_MNIST.splits.values() for name in files]
CIFAR_FILES = [name for files in CIFAR10.splits.values() for name in files]


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (body, declared Content-Length)`; 404 for anything else."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, declared = self.server.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)  # fewer bytes than declared: the connection closes mid-body

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Refuse any connection that is not to 127.0.0.1; no proxy; short timeouts."""
    connect = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] != "127.0.0.1":
            raise RuntimeError(f"test tried to contact {address}")
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.routes, httpd.requests = {}, []
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def serve(server, path: str, body: bytes, declared: int | None = None) -> str:
    server.routes["/" + path] = (body, len(body) if declared is None else declared)
    return server.base + path


def idx_spec(server, contents: dict[str, bytes], md5s=None, prefixes=("",)):
    """Fashion-MNIST pointed at the local server; each file's URLs are base + prefix + name."""
    md5s = md5s or {name: md5(data) for name, data in contents.items()}
    downloads = tuple(
        RemoteFile(name, tuple(server.base + prefix + name for prefix in prefixes), md5s[name])
        for name in contents
    )
    for name, data in contents.items():
        serve(server, name, data)
    return dataclasses.replace(FASHION_MNIST, downloads=downloads)


def idx_contents() -> dict[str, bytes]:
    return {name: f"content of {name}".encode() * (i + 1) for i, name in enumerate(IDX_FILES)}


def all_paths(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_good_download_puts_verified_files_in_place(server, tmp_path):
    contents = idx_contents()
    folder = ensure_files(idx_spec(server, contents), tmp_path, progress=False)
    assert folder == tmp_path / "fashion-mnist"
    assert {name: (folder / name).read_bytes() for name in IDX_FILES} == contents
    assert all_paths(tmp_path) == ["fashion-mnist"] + [
        f"fashion-mnist/{n}" for n in sorted(contents)
    ]
    assert sorted(server.requests) == sorted("/" + name for name in IDX_FILES)


def test_present_files_make_no_request(server, tmp_path):
    spec = idx_spec(server, idx_contents())
    (tmp_path / "fashion-mnist").mkdir()
    for name in IDX_FILES:
        (tmp_path / "fashion-mnist" / name).write_bytes(b"already here")
    assert ensure_files(spec, tmp_path) == tmp_path / "fashion-mnist"
    assert server.requests == []


def test_only_the_missing_files_are_downloaded(server, tmp_path):
    contents = idx_contents()
    spec = idx_spec(server, contents)
    (tmp_path / "fashion-mnist").mkdir()
    (tmp_path / "fashion-mnist" / IDX_FILES[0]).write_bytes(b"kept")
    ensure_files(spec, tmp_path, progress=False)
    assert server.requests == ["/" + name for name in IDX_FILES[1:]]
    assert (tmp_path / "fashion-mnist" / IDX_FILES[0]).read_bytes() == b"kept"


def test_wrong_checksum_is_refused_and_nothing_is_left(server, tmp_path):
    contents = idx_contents()
    wrong = {name: "0" * 32 for name in contents}
    spec = idx_spec(server, contents, md5s=wrong)
    actual = md5(contents[IDX_FILES[0]])
    with pytest.raises(DownloadError, match=rf"expected MD5 0{{32}}, got {actual}") as caught:
        ensure_files(spec, tmp_path, progress=False)
    assert server.base + IDX_FILES[0] in str(caught.value)
    assert all_paths(tmp_path) == []  # no file, no .part, no empty folder


def test_a_failing_url_falls_back_to_the_mirror(server, tmp_path):
    contents = idx_contents()
    spec = idx_spec(server, contents, prefixes=("gone/", ""))
    folder = ensure_files(spec, tmp_path, progress=False)
    assert (folder / IDX_FILES[0]).read_bytes() == contents[IDX_FILES[0]]
    assert server.requests[:2] == ["/gone/" + IDX_FILES[0], "/" + IDX_FILES[0]]


def test_body_shorter_than_content_length_is_refused(server, tmp_path):
    contents = idx_contents()
    spec = idx_spec(server, contents)
    name = IDX_FILES[2]
    serve(server, name, contents[name], declared=len(contents[name]) + 1000)
    with pytest.raises(
        DataError, match=rf"{len(contents[name])} of the {len(contents[name]) + 1000}"
    ):
        ensure_files(spec, tmp_path, progress=False)
    folder = tmp_path / "fashion-mnist"
    assert not (folder / name).exists()
    assert all_paths(folder) == sorted(n for n in IDX_FILES if n != name)  # the good ones stay


def test_download_off_reports_missing_files_and_how_to_place_them(server, tmp_path):
    spec = idx_spec(server, idx_contents())
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    (folder / IDX_FILES[1]).write_bytes(b"here")
    with pytest.raises(MissingDataError) as caught:
        ensure_files(spec, tmp_path, download=False)
    message = str(caught.value)
    missing = ", ".join(n for n in IDX_FILES if n != IDX_FILES[1])
    assert f"3 of 4 files missing in {folder}: {missing} (present: {IDX_FILES[1]})" in message
    assert "download=False" in message and "--data-dir / CNNLAB_DATA" in message
    assert f"download {server.base}{IDX_FILES[0]}" in message
    assert f"put the files in {folder}" in message
    assert server.base + IDX_FILES[1] not in message  # the present file need not be fetched
    assert server.requests == []


def test_unreachable_server_names_every_url_and_reason(tmp_path):
    with socket.socket() as probe:  # a port on 127.0.0.1 that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    urls = tuple(f"http://127.0.0.1:{port}/{name}" for name in IDX_FILES)
    downloads = tuple(RemoteFile(n, (u,), "0" * 32) for n, u in zip(IDX_FILES, urls, strict=True))
    spec = dataclasses.replace(FASHION_MNIST, downloads=downloads)
    with pytest.raises(MissingDataError, match="the folder does not exist") as caught:
        ensure_files(spec, tmp_path / "data", progress=False)
    message = str(caught.value)
    assert all(f"{url} (" in message for url in urls)
    assert "refused" in message.lower()
    assert f"put the files in {tmp_path / 'data' / 'fashion-mnist'}" in message
    assert not (tmp_path / "data" / "fashion-mnist").exists()


def make_tarball(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def cifar_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    folder = tarfile.TarInfo("cifar-10-batches-bin")
    folder.type = tarfile.DIRTYPE
    files = [file_member(f"cifar-10-batches-bin/{n}", n.encode() * 3) for n in CIFAR_FILES]
    return [(folder, None), *files, file_member("cifar-10-batches-bin/readme.html", b"hi")]


def cifar_spec(server, tarball: bytes):
    url = serve(server, "cifar-10-binary.tar.gz", tarball)
    remote = RemoteFile("cifar-10-binary.tar.gz", (url,), md5(tarball))
    return dataclasses.replace(CIFAR10, downloads=(remote,))


def test_cifar_tarball_is_downloaded_and_extracted(server, tmp_path):
    folder = ensure_files(cifar_spec(server, make_tarball(cifar_members())), tmp_path)
    assert folder == tmp_path / "cifar-10-batches-bin"
    assert all((folder / n).read_bytes() == n.encode() * 3 for n in CIFAR_FILES)
    extracted = sorted(f"cifar-10-batches-bin/{n}" for n in [*CIFAR_FILES, "readme.html"])
    assert all_paths(tmp_path) == ["cifar-10-batches-bin", *extracted]  # no tarball, no staging


def test_cifar_partial_folder_gets_the_missing_files(server, tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / CIFAR_FILES[0]).write_bytes(b"kept")
    ensure_files(cifar_spec(server, make_tarball(cifar_members())), tmp_path, progress=False)
    assert (folder / CIFAR_FILES[0]).read_bytes() == b"kept"
    assert missing_files(CIFAR10, tmp_path) == []
    assert len(list(tmp_path.iterdir())) == 1


def test_tarball_without_the_expected_files_is_refused(server, tmp_path):
    tarball = make_tarball(cifar_members()[:3])
    with pytest.raises(DownloadError, match="does not contain the expected files data_batch_3"):
        ensure_files(cifar_spec(server, tarball), tmp_path, progress=False)
    assert all_paths(tmp_path) == []


def symlink(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize(
    ("evil", "reason"),
    [
        (lambda tmp: file_member("../evil", b"x"), "absolute path or '..'"),
        (lambda tmp: file_member("cifar-10-batches-bin/../../evil", b"x"), "absolute path"),
        (lambda tmp: file_member(str(tmp / "evil"), b"x"), "absolute path or '..'"),
        (lambda tmp: symlink("cifar-10-batches-bin/evil", str(tmp / "evil")), "symbolic link"),
        (lambda tmp: symlink("cifar-10-batches-bin/e", "/etc/passwd", tarfile.LNKTYPE), "hard"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"],
)
def test_malicious_tarball_is_refused_and_nothing_is_extracted(server, tmp_path, evil, reason):
    root = tmp_path / "root"
    root.mkdir()
    members = cifar_members()
    members.insert(2, evil(tmp_path))  # after some good members: nothing may be written at all
    with pytest.raises(DownloadError, match=rf"refusing to extract .*{reason}"):
        ensure_files(cifar_spec(server, make_tarball(members)), root, progress=False)
    assert all_paths(root) == []
    assert all_paths(tmp_path) == ["root"]


def test_progress_line_shows_bytes_percent_and_rate():
    assert format_progress("f.gz", 1_500_000, 3_000_000, 0.5) == "f.gz: 1.5/3.0 MB  50% 3.0 MB/s"
    assert format_progress("f.gz", 2_000_000, None, 1.0) == "f.gz: 2.0 MB 2.0 MB/s"


def test_progress_bar_only_on_a_terminal(server, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    contents = idx_contents()
    spec = idx_spec(server, contents)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    ensure_files(spec, tmp_path / "quiet")
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr("sys.stderr", Terminal())
    ensure_files(spec, tmp_path / "shown", progress=False)
    assert sys.stderr.getvalue() == ""
    ensure_files(spec, tmp_path / "loud")
    shown = sys.stderr.getvalue()
    size = len(contents[IDX_FILES[0]]) / 1e6
    assert f"\r{IDX_FILES[0]}: {size:.1f}/{size:.1f} MB 100%" in shown and "MB/s\n" in shown
