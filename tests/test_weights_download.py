"""Backbone weights are downloaded into the torch hub cache when online (from a mirror here: a local HTTP server on
127.0.0.1), checked against the SHA-256 prefix in the file name, and never downloaded with OTS_OFFLINE=1."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial

import pytest
import torch

from ots import weights
from ots.errors import WeightsNotFoundError


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A small real weights file served over HTTP on loopback, registered as backbone "tiny"; yields (dir, file,
    request log)."""
    served = tmp_path / "served"
    served.mkdir()
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    raw = served / "raw.pth"
    torch.save(state, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    filename = f"tiny-{digest[:8]}.pth"
    raw.rename(served / filename)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean; remember what was asked
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    monkeypatch.setitem(weights.KNOWN_WEIGHTS, "tiny", (filename, f"http://127.0.0.1:{port}/official/{filename}"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("OTS_TINY_WEIGHTS", raising=False)
    monkeypatch.delenv(weights.MIRROR_VAR, raising=False)
    monkeypatch.setenv(weights.OFFLINE_VAR, "0")
    yield served, filename, requests, f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def test_online_download_lands_in_the_hub_cache_once(mirror, monkeypatch):
    served, filename, requests, base = mirror
    monkeypatch.setenv(weights.MIRROR_VAR, base)
    path = weights.resolve_weights("tiny")
    assert path == str(weights.hub_checkpoint_dir() / filename)
    assert torch.equal(weights.load_state_dict(path)["w"], torch.arange(6.0).reshape(2, 3))
    assert requests == [f"/{filename}"]
    assert weights.resolve_weights("tiny") == path  # second call: from the cache, no request
    assert len(requests) == 1


def test_offline_switch_never_downloads(mirror, monkeypatch):
    served, filename, requests, base = mirror
    monkeypatch.setenv(weights.MIRROR_VAR, base)
    monkeypatch.setenv(weights.OFFLINE_VAR, "1")
    with pytest.raises(WeightsNotFoundError, match=rf"OTS_OFFLINE=1: put {filename} in .*hub/checkpoints"):
        weights.resolve_weights("tiny")
    assert requests == []


def test_corrupt_download_is_refused_and_leaves_nothing(mirror, monkeypatch):
    served, filename, requests, base = mirror
    (served / filename).write_bytes(b"not the weights")  # same name, wrong content: hash prefix mismatch
    monkeypatch.setenv(weights.MIRROR_VAR, base)
    with pytest.raises(WeightsNotFoundError, match=r"tiny weights: download from .* failed \(.*hash") as err:
        weights.resolve_weights("tiny")
    assert "\n" not in str(err.value)
    cache = weights.hub_checkpoint_dir()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_unreachable_url_is_one_line_naming_the_file(mirror):
    served, filename, requests, base = mirror
    # no mirror: the registered URL's /official/ path does not exist on the server -> HTTP 404
    with pytest.raises(WeightsNotFoundError, match=rf"download from {base}/official/{filename} failed .*404") as err:
        weights.resolve_weights("tiny")
    assert "\n" not in str(err.value) and "OTS_OFFLINE=1" in str(err.value)
