"""The blob store lives in one agent-owned folder that the next start sweeps (issue 9,
attack 12).

After a SIGKILL the dead agent's blobs, resource folders and partial uploads stayed on disk for
ever. Each agent now keeps a subfolder of one root (``<tmp>/vaccel-agent-<uid>`` or
``--blob-dir``) with a lock file it holds while alive; a starting agent removes the subfolders
whose lock it can take, never a live agent's. The root must be a real 0700 folder of ours.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from vaccel_core import VaccelError
from vaccel_core.transport import Message

from .conftest import AgentProcess, RawClient, agent_command, clean_env, start_agent
from .test_agent_blobs import blob

pytestmark = pytest.mark.timeout(90)


def agent_folder(root: Path, handle: AgentProcess) -> Path:
    folders = [p for p in root.glob(f"agent-{handle.pid}-*") if p.is_dir()]
    assert len(folders) == 1, sorted(p.name for p in root.iterdir())
    return folders[0]


def hold_things(client: RawClient) -> tuple[int, int, bytes]:
    """A registered resource and an unfinished upload on the agent."""
    pb = client.pb
    sid = client.create_session()
    data, digest = blob(100_000, 1)
    req = pb.PutBlobRequest(sha256=digest, size=len(data), offset=0)
    req.data.inline = data
    assert client.call("PutBlob", req, pb.PutBlobResponse).complete
    reg = pb.RegisterResourceRequest(session_id=sid, type=2)
    reg.files.add(name="model.onnx", sha256=digest, size=len(data))
    rid = client.call("RegisterResource", reg, pb.RegisterResourceResponse).resource_id
    other, other_digest = blob(100_000, 2)
    part = pb.PutBlobRequest(sha256=other_digest, size=len(other), offset=0)
    part.data.inline = other[:1000]
    assert client.call("PutBlob", part, pb.PutBlobResponse).received == 1000
    return sid, rid, data


def test_a_killed_agents_files_are_swept_by_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    first = start_agent([f"unix://{tmp_path / 'a.sock'}"], args=["--blob-dir", str(root)])
    client = RawClient(first.address)
    try:
        hold_things(client)
        folder = agent_folder(root, first)
        names = sorted(p.name for p in folder.iterdir())
        assert any(n.endswith(".partial") for n in names)
        assert any(n.startswith("resource-") for n in names)
        first.kill()
    finally:
        client.close()
    assert folder.exists(), "SIGKILL leaves the files (nothing could remove them)"
    second = start_agent([f"unix://{tmp_path / 'b.sock'}"], args=["--blob-dir", str(root)])
    try:
        assert not folder.exists(), "the dead agent's folder was swept at start"
        assert not (root / f"{folder.name}.lock").exists()
        assert agent_folder(root, second).exists()
    finally:
        second.stop()
    assert list(root.iterdir()) == [], "a clean stop leaves nothing behind"


def test_the_default_root_is_per_user_under_the_temporary_folder(tmp_path: Path) -> None:
    env = {"VACCEL_PLUGINS": "noop", "TMPDIR": str(tmp_path)}
    root = tmp_path / f"vaccel-agent-{os.geteuid()}"
    first = start_agent([f"unix://{tmp_path / 'a.sock'}"], env=env)
    client = RawClient(first.address)
    try:
        hold_things(client)
        assert oct(root.stat().st_mode & 0o777) == "0o700"
        folder = agent_folder(root, first)
        first.kill()
    finally:
        client.close()
    second = start_agent([f"unix://{tmp_path / 'b.sock'}"], env=env)
    try:
        assert not folder.exists()
    finally:
        second.stop()


def test_a_live_agents_files_are_never_swept(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    first = start_agent([f"unix://{tmp_path / 'a.sock'}"], args=["--blob-dir", str(root)])
    client = RawClient(first.address)
    try:
        sid, rid, data = hold_things(client)
        folder = agent_folder(root, first)
        before = sorted(p.name for p in folder.iterdir())
        second = start_agent([f"unix://{tmp_path / 'b.sock'}"], args=["--blob-dir", str(root)])
        try:
            assert sorted(p.name for p in folder.iterdir()) == before
            pb = client.pb
            request = pb.SyncResourceRequest(session_id=sid, resource_id=rid)
            reply = client.channel.call("SyncResource", Message(request.SerializeToString()), 10)
            from vaccel_plugins.rpc import codec

            synced = pb.SyncResourceResponse.FromString(bytes(reply.payload))
            got = codec.Decoder(reply.buffers, "test").data(synced.files[0].data, "data")
            assert bytes(got) == data, "the first agent still serves its files"
        finally:
            second.stop()
    finally:
        client.close()
        first.stop()
    assert list(root.iterdir()) == []


def refused(tmp_path: Path, blob_dir: Path) -> str:
    """Start the agent with ``--blob-dir blob_dir``; it must exit 1: returns its stderr."""
    proc = subprocess.run(
        [*agent_command(), "-a", f"unix://{tmp_path / 'x.sock'}", "--blob-dir", str(blob_dir)],
        env=clean_env({"VACCEL_PLUGINS": "noop"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.sock").exists()
    return proc.stderr


def test_a_symlinked_root_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    err = refused(tmp_path, link)
    assert "is a symbolic link" in err and str(link) in err
    assert list(target.iterdir()) == [], "nothing written through the link"


def test_a_root_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        owner = 65534
    else:
        theirs, owner = Path("/"), 0  # owned by root
    err = refused(tmp_path, theirs)
    assert f"is owned by uid {owner}" in err
    assert f"expected a directory owned by uid {os.geteuid()} with mode 0700" in err


def test_a_root_others_may_open_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    err = refused(tmp_path, shared)
    assert "has mode 0755" in err and "with mode 0700" in err
    assert list(shared.iterdir()) == []


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_bytes(b"")
    assert "is not a directory" in refused(tmp_path, plain)


def test_the_store_in_process(tmp_path: Path) -> None:
    from vaccel_agent.blobs import BlobStore

    store = BlobStore(tmp_path / "new" / "root")
    try:
        assert store.base == tmp_path / "new" / "root"
        assert oct(store.base.stat().st_mode & 0o777) == "0o700"
        assert store.root.parent == store.base
        assert oct(store.root.stat().st_mode & 0o777) == "0o700"
        other = BlobStore(store.base)  # a second live store keeps the first one's folder
        try:
            assert store.root.exists() and other.root != store.root
        finally:
            other.close()
        assert not other.root.exists()
    finally:
        store.close()
    assert list(store.base.iterdir()) == []
    default = BlobStore()
    try:
        expected = Path(tempfile.gettempdir()) / f"vaccel-agent-{os.geteuid()}"
        assert default.base == expected
    finally:
        default.close()
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(VaccelError, match="is a symbolic link"):
        BlobStore(link)


def test_agents_starting_at_once_never_sweep_each_other(tmp_path: Path) -> None:
    import threading

    from vaccel_agent.blobs import BlobStore

    base = tmp_path / "root"
    stores: list[BlobStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def start() -> None:
        try:
            barrier.wait(10)
            store = BlobStore(base)
            (store.root / "mine").write_bytes(b"x")
            stores.append(store)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors and len(stores) == 16
        assert all((s.root / "mine").read_bytes() == b"x" for s in stores)
        BlobStore(base).close()  # one more start sweeps nothing of theirs
        assert all((s.root / "mine").exists() for s in stores)
    finally:
        for store in stores:
            store.close()
    assert list(base.iterdir()) == []


def test_lock_files_being_made_are_left_alone_while_young(tmp_path: Path) -> None:
    from vaccel_agent.blobs import BlobStore

    base = tmp_path / "root"
    base.mkdir(mode=0o700)
    young = base / ".agent-1-0123456789abcdef.lock.new"
    old = base / ".agent-2-0123456789abcdef.lock.new"
    orphan = base / "agent-3-0123456789abcdef"  # a folder whose lock file is gone
    unrelated = base / "notes.txt"
    for path in (young, old, unrelated):
        path.write_bytes(b"")
    orphan.mkdir()
    os.utime(old, (0, 0))
    BlobStore(base).close()
    assert young.exists() and unrelated.exists()
    assert not old.exists() and not orphan.exists()
