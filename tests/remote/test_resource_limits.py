"""RegisterResource costs time linear in its size and is capped (issue 9, attack 10).

40k file names used to cost 12 s of agent CPU (a quadratic duplicate check) for a 3 MB request.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from vaccel_core import Resource, ResourceType
from vaccel_core.errors import OutOfMemoryError
from vaccel_core.transport import CallError, Peer

from .conftest import make_service, remote_session, start_agent
from .test_agent_blobs import blob, call, new_session, register, upload

pytestmark = pytest.mark.timeout(60)


def many_names(n: int) -> list[tuple[str, str, int]]:
    digest = hashlib.sha256(b"x").hexdigest()
    return [(f"file-{i:06d}.bin", digest, 1) for i in range(n)]


def test_forty_thousand_names_are_checked_in_linear_time() -> None:
    svc = make_service(max_resource_files=100_000)
    try:
        p = Peer("p")
        sid = new_session(svc, p)
        files = many_names(40_000)
        files.append(files[0])  # a duplicate at the very end: every name is checked first
        start = time.process_time()
        with pytest.raises(CallError, match=r"duplicate file name 'file-000000\.bin'"):
            register(svc, p, sid, files)
        elapsed = time.process_time() - start
        assert elapsed < 2.0, f"checking 40001 names took {elapsed:.1f} s of CPU"
        start = time.process_time()
        reply = register(svc, p, sid, files[:-1])  # all valid: the one blob is missing
        assert list(reply.missing_blobs) == [files[0][1]]
        assert time.process_time() - start < 2.0
    finally:
        svc.close()


def test_files_per_resource_are_capped(service: Any) -> None:
    p = Peer("p")
    sid = new_session(service, p)
    with pytest.raises(CallError) as err:
        register(service, p, sid, many_names(257))
    assert err.value.status == "RESOURCE_EXHAUSTED"
    assert "257 files" in err.value.message and "--max-resource-files" in err.value.message
    assert list(register(service, p, sid, many_names(256)).missing_blobs), "256 are fine"


def test_resources_per_client_are_capped_across_its_sessions() -> None:
    svc = make_service(max_resources=3)
    try:
        p, q = Peer("p"), Peer("q")
        data, digest = blob(100, 1)
        for peer in (p, q):
            assert upload(svc, peer, data).complete
        one, two = new_session(svc, p), new_session(svc, p)
        rids = [register(svc, p, sid, [("m", digest, 100)]).resource_id for sid in (one, one, two)]
        assert all(rids)
        with pytest.raises(CallError) as err:
            register(svc, p, two, [("m", digest, 100)])
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "3 resources" in err.value.message and "--max-resources" in err.value.message
        assert svc.counts()["resources"] == 3
        assert len(list(svc.blobs.root.glob("resource-*"))) == 3, "nothing left of the refusal"
        # another client is not affected
        assert register(svc, q, new_session(svc, q), [("m", digest, 100)]).resource_id
        # unregistering one makes room again
        pb = svc.pb
        call(
            svc,
            "UnregisterResource",
            pb.UnregisterResourceRequest(session_id=one, resource_id=rids[0]),
            pb.UnregisterResourceResponse,
            p,
        )
        assert register(svc, p, two, [("m", digest, 100)]).resource_id
    finally:
        svc.close()


def test_limits_reach_the_rpc_client_through_a_real_agent(tmp_path: Path) -> None:
    handle = start_agent(
        [f"unix://{tmp_path / 'v.sock'}"],
        args=["--max-resource-files", "2", "--max-resources", "1"],
    )
    try:
        with remote_session(handle.address) as session:
            three = Resource.from_buffers(
                [("a", b"1"), ("b", b"2"), ("c", b"3")], ResourceType.DATA
            )
            with pytest.raises(OutOfMemoryError, match=r"3 files .*--max-resource-files"):
                three.register(session)
            Resource.from_buffers([("a", b"1"), ("b", b"2")], ResourceType.DATA).register(session)
            with pytest.raises(OutOfMemoryError, match="--max-resources"):
                Resource.from_buffer(b"3", ResourceType.DATA).register(session)
            session.noop()
    finally:
        handle.stop()
