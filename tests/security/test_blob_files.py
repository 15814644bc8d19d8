"""A blob's bytes are shared by every client that uploaded them and reach backends through
hard links: the file is read-only, so that a backend writing to "its" resource file by mistake
fails instead of changing another client's copy."""

from __future__ import annotations

import hashlib
import stat

from tests.remote.conftest import make_service
from tests.security.conftest import session_with_model
from vaccel_core.transport import Peer


def test_blob_files_and_their_links_are_read_only() -> None:
    svc = make_service()
    try:
        data = b"weights" * 1000
        session_with_model(svc, Peer("p"), data)
        digest = hashlib.sha256(data).hexdigest()
        blob = svc.blobs.path(digest)
        assert stat.S_IMODE(blob.stat().st_mode) == 0o444
        links = [p for p in svc.blobs.root.rglob("model.onnx")]
        assert links and all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in links)
    finally:
        svc.close()
