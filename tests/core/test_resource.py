from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vaccel_core import (
    InvalidArgumentError,
    NotFoundError,
    Resource,
    ResourceType,
    SessionError,
)

from .helpers import make_registry, session


def test_resource_from_file_directory_several_files_and_buffer(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"AAAA")
    (tmp_path / "b.txt").write_bytes(b"BB")
    single = Resource(tmp_path / "a.onnx", ResourceType.MODEL)
    assert [f.name for f in single.files] == ["a.onnx"] and single.type is ResourceType.MODEL
    folder = Resource(str(tmp_path), ResourceType.DATA)
    assert [f.name for f in folder.files] == ["a.onnx", "b.txt"]
    several = Resource([tmp_path / "b.txt", tmp_path / "a.onnx"], 1)
    assert [f.size for f in several.files] == [2, 4]
    buf = Resource.from_buffer(b"xyz", ResourceType.LIB, name="lib.so")
    assert buf.files[0].read() == b"xyz"
    assert buf.sha256() == hashlib.sha256(b"xyz").hexdigest()
    assert len({single.id, folder.id, several.id, buf.id}) == 4


def test_bad_resources_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        Resource(tmp_path / "missing.onnx", ResourceType.MODEL)
    with pytest.raises(InvalidArgumentError, match="expected one of LIB, DATA, MODEL, got 7"):
        Resource.from_buffer(b"x", 7)
    with pytest.raises(InvalidArgumentError, match=r"plain file name, got '\.\./escape'"):
        Resource.from_buffer(b"x", ResourceType.DATA, name="../escape")
    with pytest.raises(InvalidArgumentError, match="expected a plain file name"):
        Resource.from_buffer(b"x", ResourceType.DATA, name="a\0b")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidArgumentError, match="has no files"):
        Resource(empty, ResourceType.DATA)


def test_register_refcount_and_release_unregisters() -> None:
    registry = make_registry()
    res = Resource.from_buffer(b"model", ResourceType.MODEL)
    with session(registry) as a, session(registry) as b:
        res.register(a)
        res.register(b)
        assert res.refcount == 2 and res.session_ids == sorted([a.id, b.id])
        with pytest.raises(InvalidArgumentError, match="already registered"):
            res.register(a)
        res.unregister(a)
        assert res.refcount == 1 and not a.has_resource(res)
        with pytest.raises(InvalidArgumentError, match="is not registered"):
            res.unregister(a)
    assert res.refcount == 0  # releasing b dropped it
    with pytest.raises(SessionError):
        res.register(a)


def test_buffer_resource_materialises_files_until_last_session_lets_go() -> None:
    registry = make_registry()
    res = Resource.from_buffers([("m.onnx", b"1"), ("labels.txt", b"2")], ResourceType.MODEL)
    with session(registry) as s:
        res.register(s)
        paths = res.local_paths()
        assert [p.read_bytes() for p in paths] == [b"1", b"2"]
        assert res.local_paths() == paths  # written once
    assert not paths[0].exists()


def test_operation_rejects_resource_of_other_session_or_type() -> None:
    registry = make_registry()
    model = Resource.from_buffer(b"m", ResourceType.MODEL)
    lib = Resource.from_buffer(b"l", ResourceType.LIB)
    with session(registry) as s:
        with pytest.raises(
            InvalidArgumentError,
            match=f"model_load: argument 'resource': expected a resource "
            f"registered with session {s.id}",
        ):
            s.model_load(model)
        lib.register(s)
        with pytest.raises(InvalidArgumentError, match="expected a MODEL resource, got a LIB"):
            s.model_load(lib)


def test_files_of_one_resource_need_distinct_names(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "m.bin").write_bytes(sub.encode())
    with pytest.raises(InvalidArgumentError, match=r"two files are named 'm\.bin'"):
        Resource([tmp_path / "a" / "m.bin", tmp_path / "b" / "m.bin"], ResourceType.MODEL)
    with pytest.raises(InvalidArgumentError, match="two files are named 'x'"):
        Resource.from_buffers([("x", b"1"), ("x", b"2")], ResourceType.DATA)


def test_each_file_has_its_own_digest() -> None:
    res = Resource.from_buffers([("a", b"1"), ("b", b"2")], ResourceType.DATA)
    assert res.sha256(0) == hashlib.sha256(b"1").hexdigest()
    assert res.sha256(1) == hashlib.sha256(b"2").hexdigest()


def test_a_file_deleted_after_creation_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "gone.onnx"
    path.write_bytes(b"x")
    res = Resource(path, ResourceType.MODEL)
    path.unlink()
    with pytest.raises(NotFoundError, match=r"cannot read file .*gone\.onnx"):
        res.sha256()
    with pytest.raises(NotFoundError, match=r"cannot read file .*gone\.onnx"):
        res.files[0].read()
