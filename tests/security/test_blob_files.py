"""A blob's bytes are shared by every client that uploaded them and reach backends through
hard links: the file is read-only, so that a backend writing to "its" resource file by mistake
fails instead of changing another client's copy."""

from __future__ import annotations

import hashlib
import stat
from typing import Any

from tests.remote.conftest import make_service, service_call
from vaccel_core.transport import Peer


def pb() -> Any:
    from vaccel_core.proto import pb as load

    return load()


def test_blob_files_and_their_links_are_read_only() -> None:
    svc = make_service()
    try:
        peer = Peer("p")
        sid = service_call(
            svc, "CreateSession", pb().CreateSessionRequest(), pb().CreateSessionResponse, peer
        ).session_id
        data = b"weights" * 1000
        digest = hashlib.sha256(data).hexdigest()
        put = pb().PutBlobRequest(sha256=digest, size=len(data), offset=0)
        put.data.inline = data
        service_call(svc, "PutBlob", put, pb().PutBlobResponse, peer)
        register = pb().RegisterResourceRequest(session_id=sid, type=2)
        register.files.add(name="model.onnx", sha256=digest, size=len(data))
        service_call(svc, "RegisterResource", register, pb().RegisterResourceResponse, peer)
        blob = svc.blobs.path(digest)
        assert stat.S_IMODE(blob.stat().st_mode) == 0o444
        links = [p for p in svc.blobs.root.rglob("model.onnx")]
        assert links and all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in links)
    finally:
        svc.close()
