"""Uploads in progress are bounded per client and do not outlive it (issue 9, attack 9).

Four empty PutBlobs announcing 8 MiB each used to reserve 32 MiB of quota with nothing
uploaded, for about 300 s after the client was gone.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vaccel_core.transport import CallError, Peer

from .conftest import RawClient, make_service, start_agent, wait_until
from .test_agent_blobs import blob, new_session, partials, put, register, upload

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20


def test_uploads_in_progress_per_client_are_bounded() -> None:
    svc = make_service(max_uploads=2)
    try:
        p, q = Peer("p"), Peer("q")
        blobs = [blob(1000, seed) for seed in range(4)]
        for data, digest in blobs[:2]:
            assert put(svc, p, digest, len(data), 0, data[:10]).received == 10
        data, digest = blobs[2]
        with pytest.raises(CallError) as err:
            put(svc, p, digest, len(data), 0, data[:10])
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "2 uploads in progress" in err.value.message
        assert "--max-uploads" in err.value.message
        assert len(partials(svc)) == 2, "the refused upload left nothing behind"
        # another client is not affected
        assert put(svc, q, digest, len(data), 0, data[:10]).received == 10
        # restarting one of p's own uploads is not a new one
        first, first_digest = blobs[0]
        assert put(svc, p, first_digest, len(first), 0, first[:20]).received == 20
        # a finished upload frees its slot
        assert put(svc, p, first_digest, len(first), 20, first[20:]).complete
        assert put(svc, p, digest, len(data), 0, data).complete
    finally:
        svc.close()


def test_bytes_one_client_holds_and_reserves_are_bounded() -> None:
    svc = make_service(max_client_blob_bytes=1000)
    try:
        p, q = Peer("p"), Peer("q")
        held, _ = blob(600, 1)
        assert upload(svc, p, held).complete
        more, more_digest = blob(500, 2)
        with pytest.raises(CallError) as err:
            put(svc, p, more_digest, len(more), 0, b"")
        assert err.value.status == "RESOURCE_EXHAUSTED"
        assert "--max-client-blob-bytes" in err.value.message
        assert "600 bytes" in err.value.message and "1000 bytes" in err.value.message
        # another client has its own allowance
        assert upload(svc, q, more).complete
        assert upload(svc, q, blob(500, 3)[0]).complete
        # p holding a blob no resource uses is freed with p
        svc.peer_disconnected(p)
        assert upload(svc, p, more).complete
    finally:
        svc.close()
    unlimited = make_service(max_blob_bytes=0, max_client_blob_bytes=0, blob_quota_bytes=0)
    try:
        data, digest = blob(10, 4)
        assert put(unlimited, Peer("p"), digest, 1 << 50, 0, data).received == 10
    finally:
        unlimited.close()


def test_an_idle_upload_is_dropped_and_its_reservation_freed() -> None:
    svc = make_service(upload_idle_timeout=5, blob_quota_bytes=32 * MiB)
    try:
        p, q = Peer("p"), Peer("q")
        svc.peer_connected(p)
        digests = [blob(100, seed)[1] for seed in range(4)]
        for digest in digests:  # the attack: 4 x 8 MiB announced, nothing sent
            put(svc, p, digest, 8 * MiB, 0, b"")
        wanted, wanted_digest = blob(MiB, 9)
        with pytest.raises(CallError, match="quota of 33554432 bytes"):
            put(svc, q, wanted_digest, len(wanted), 0, wanted)
        svc.reap(time.monotonic() + 4)
        assert len(partials(svc)) == 4, "not idle long enough yet"
        svc.reap(time.monotonic() + 6)
        assert partials(svc) == [], "idle uploads dropped"
        assert upload(svc, q, wanted).complete, "their reservation was freed"
        with pytest.raises(CallError, match="send it again from offset 0") as err:
            put(svc, p, digests[0], 8 * MiB, 10, b"x")
        assert err.value.status == "NOT_FOUND"
    finally:
        svc.close()


def test_a_blob_uploaded_but_never_used_is_dropped_when_its_client_idles() -> None:
    svc = make_service(upload_idle_timeout=5)
    try:
        p = Peer("p")
        data, digest = blob(1000, 1)
        assert upload(svc, p, data).complete
        used, used_digest = blob(1000, 2)
        assert upload(svc, p, used).complete
        sid = new_session(svc, p)
        assert register(svc, p, sid, [("m", used_digest, len(used))]).resource_id
        svc.reap(time.monotonic() + 6)
        assert not svc.blobs.holds(p.id, digest), "unused blob dropped"
        assert svc.blobs.holds(p.id, used_digest), "a blob a resource uses stays"
    finally:
        svc.close()


def test_a_departed_clients_reservations_and_blobs_are_released_at_once() -> None:
    svc = make_service(blob_quota_bytes=32 * MiB)
    try:
        p, q = Peer("p"), Peer("q")
        svc.peer_connected(p)
        held, _ = blob(MiB, 1)
        assert upload(svc, p, held).complete
        for seed in range(3):
            put(svc, p, blob(100, seed + 2)[1], 8 * MiB, 0, b"")
        wanted, wanted_digest = blob(8 * MiB, 9)
        with pytest.raises(CallError, match="quota"):
            put(svc, q, wanted_digest, len(wanted), 0, b"")
        svc.peer_disconnected(p)
        assert partials(svc) == [] and svc.counts()["blobs"] == 0
        assert upload(svc, q, wanted).complete
    finally:
        svc.close()


def test_reservations_go_with_the_client_through_a_real_agent(tmp_path: Path) -> None:
    handle = start_agent(
        [f"unix://{tmp_path / 'v.sock'}"],
        args=["--blob-quota", "32M", "--upload-idle-timeout", "2"],
    )
    try:
        wanted, wanted_digest = blob(8 * MiB, 9)

        def try_upload(client: RawClient) -> bool:
            req = client.pb.PutBlobRequest(sha256=wanted_digest, size=len(wanted), offset=0)
            req.data.inline = wanted
            try:
                return bool(client.call("PutBlob", req, client.pb.PutBlobResponse).complete)
            except CallError as exc:
                assert exc.status == "RESOURCE_EXHAUSTED", exc
                return False

        def reserve(client: RawClient) -> None:
            for seed in range(4):
                req = client.pb.PutBlobRequest(sha256=blob(100, seed)[1], size=8 * MiB, offset=0)
                req.data.inline = b""
                client.call("PutBlob", req, client.pb.PutBlobResponse)

        # 1. the client goes away: its reservations go at once
        attacker, other = RawClient(handle.address), RawClient(handle.address)
        try:
            reserve(attacker)
            assert not try_upload(other), "32 MiB reserved"
            attacker.close()
            start = time.monotonic()
            wait_until(lambda: try_upload(other), 10, "reservations released")
            assert time.monotonic() - start < 5
        finally:
            attacker.close()
            other.close()
        # 2. the client stays but sends nothing: dropped after --upload-idle-timeout
        attacker, other = RawClient(handle.address), RawClient(handle.address)
        try:
            reserve(attacker)
            assert not try_upload(other)
            start = time.monotonic()
            wait_until(lambda: try_upload(other), 15, "idle reservations dropped")
            assert time.monotonic() - start >= 1.0
        finally:
            attacker.close()
            other.close()
    finally:
        handle.stop()
