"""Configuration, the cached download (against a loopback HTTP server) and output stripping."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import nbformat
import pytest

from helpers import config, download, notebooks


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #
def test_resolve_profile(monkeypatch):
    monkeypatch.delenv("CXR_PROFILE", raising=False)
    assert config.resolve_profile("auto") == "full"
    monkeypatch.setenv("CXR_PROFILE", "smoke")
    assert config.resolve_profile("auto") == "smoke"
    assert config.resolve_profile("full") == "full"  # an explicit parameter wins
    with pytest.raises(ValueError, match="Unknown profile 'fast'"):
        config.resolve_profile("fast")


def test_artifacts_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_ARTIFACTS_DIR", str(tmp_path / "out"))
    assert config.artifacts_dir("figures/x") == tmp_path / "out" / "figures" / "x"
    assert (tmp_path / "out" / "figures" / "x").is_dir()
    monkeypatch.delenv("CXR_ARTIFACTS_DIR")
    assert config.artifacts_dir(create=False) == config.PROJECT_ROOT / "artifacts"


# --------------------------------------------------------------------------- #
# Download (loopback only)
# --------------------------------------------------------------------------- #
@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests_seen = 0

    def do_GET(self):
        type(self).requests_seen += 1
        super().do_GET()

    def log_message(self, *args):
        pass


def test_download_is_cached_and_hash_checked(file_server, tmp_path):
    served, base_url = file_server
    (served / "images.tfrec").write_bytes(b"x" * 5000)
    target = tmp_path / "data" / "images.tfrec"
    before = _QuietHandler.requests_seen
    download.download(f"{base_url}/images.tfrec", target)
    assert target.read_bytes() == b"x" * 5000
    record = json.loads((tmp_path / "data" / "images.tfrec.download.json").read_text())
    assert record["size_bytes"] == 5000 and len(record["sha256"]) == 64
    download.download(f"{base_url}/images.tfrec", target)  # cached: no second request
    assert _QuietHandler.requests_seen == before + 1
    target.write_bytes(b"x" * 10)  # a damaged cache is fetched again
    download.download(f"{base_url}/images.tfrec", target)
    assert target.stat().st_size == 5000 and _QuietHandler.requests_seen == before + 2


def test_download_with_wrong_hash_leaves_nothing(file_server, tmp_path):
    served, base_url = file_server
    (served / "paths.tfrec").write_bytes(b"abc")
    target = tmp_path / "paths.tfrec"
    with pytest.raises(OSError, match="SHA-256 .* expected 000"):
        download.download(f"{base_url}/paths.tfrec", target, expected_sha256="000")
    assert not target.exists() and not (tmp_path / "paths.tfrec.part").exists()


def test_download_of_a_missing_file_says_what_to_do(file_server, tmp_path):
    _, base_url = file_server
    with pytest.raises(OSError, match="set CXR_DATA_DIR to a local copy"):
        download.download(f"{base_url}/nope.tfrec", tmp_path / "nope.tfrec")


# --------------------------------------------------------------------------- #
# Output stripping keeps only the nbval-checked cells
# --------------------------------------------------------------------------- #
def test_strip_outputs_keeps_only_checked_cells(tmp_path):
    cells = [nbformat.v4.new_code_cell("print(1)"),
             nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(2)")]
    for index, cell in enumerate(cells):
        cell["id"] = f"c{index}"
    executed = nbformat.v4.new_notebook(cells=[nbformat.from_dict(dict(c)) for c in cells])
    for cell, text in zip(executed.cells, ("1\n", "2\n")):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        cell.execution_count = 7
    source = nbformat.v4.new_notebook(cells=cells)
    nbformat.write(source, tmp_path / "01_x.ipynb")
    nbformat.write(executed, tmp_path / "executed.ipynb")
    notebooks.strip_outputs(tmp_path / "01_x.ipynb", tmp_path / "executed.ipynb")
    stripped = nbformat.read(tmp_path / "01_x.ipynb", as_version=4)
    assert stripped.cells[0].outputs == [] and stripped.cells[0].execution_count is None
    assert stripped.cells[1].outputs[0]["text"] == "2\n" and stripped.cells[1].execution_count == 7
