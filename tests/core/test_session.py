from __future__ import annotations

import threading

import pytest

from vaccel_core import (
    BackendError,
    NotSupportedError,
    Op,
    PluginError,
    PluginType,
    Session,
    SessionError,
)

from .helpers import (
    FailingBackend,
    RecordingBackend,
    UnavailableBackend,
    make_registry,
    session,
)


def test_session_is_a_context_manager_with_increasing_ids() -> None:
    registry = make_registry()
    with session(registry) as a, session(registry) as b:
        assert isinstance(a.id, int) and b.id > a.id
        assert not a.closed
        a.noop()
    assert a.closed and b.closed
    with pytest.raises(SessionError, match=f"noop: session {a.id} is released"):
        a.noop()
    a.release()  # idempotent


def test_default_selection_is_every_available_local_backend_noop_last() -> None:
    registry = make_registry(RecordingBackend, UnavailableBackend)
    with session(registry) as s:
        assert [b.name for b in s.backends] == ["recorder", "noop"]
        assert s.classify(b"img")[0] == "recorded 3 bytes"
        # recorder has no noop: the next backend serves it
        assert s.backend_for(Op.NOOP).name == "noop"


def test_configured_order_wins() -> None:
    registry = make_registry(RecordingBackend)
    with session(registry, ["noop", "recorder"]) as s:
        assert s.classify(b"img")[0] == "This is a dummy classification tag!"


def test_unknown_backend_in_config_is_named() -> None:
    registry = make_registry()
    with pytest.raises(PluginError, match=r"unknown backend 'jetsonx' \(known: noop\)"):
        session(registry, ["jetsonx"])


def test_unavailable_backend_is_skipped_but_not_alone() -> None:
    registry = make_registry(UnavailableBackend)
    with session(registry, ["ghost", "noop"]) as s:
        assert [b.name for b in s.backends] == ["noop"]
    with pytest.raises(PluginError, match="ghostlib is not installed"):
        session(registry, ["ghost"])


def test_flags_filter_by_type() -> None:
    registry = make_registry(RecordingBackend, FailingBackend)
    with session(registry, flags=PluginType.CPU) as s:
        assert [b.name for b in s.backends] == ["recorder"]
    with session(registry, flags=PluginType.DEBUG) as s:
        assert [b.name for b in s.backends] == ["noop"]
    with pytest.raises(PluginError, match="no configured backend matches session flags REMOTE"):
        session(registry, flags=PluginType.REMOTE)
    with pytest.raises(PluginError, match="matches session flags FPGA"):
        session(registry, flags=PluginType.FPGA)


def test_missing_operation_names_every_backend_tried() -> None:
    registry = make_registry(RecordingBackend, with_noop=False)
    with session(registry) as s, pytest.raises(NotSupportedError) as info:
        s.noop()
    assert "noop" in str(info.value) and "tried: recorder" in str(info.value)


def test_backend_crash_becomes_backend_error_naming_backend() -> None:
    registry = make_registry(FailingBackend)
    with session(registry, ["failing"]) as s:
        with pytest.raises(
            BackendError, match="classify: backend 'failing' failed: RuntimeError: device on fire"
        ):
            s.classify(b"x")
        assert not s.closed  # the session survives a failed call


def test_lifecycle_hooks_called_in_order() -> None:
    RecordingBackend.events = []
    registry = make_registry(RecordingBackend)
    from vaccel_core import Resource, ResourceType

    with session(registry, ["recorder"]) as s:
        res = Resource.from_buffer(b"m", ResourceType.MODEL)
        res.register(s)
    assert RecordingBackend.events == [
        ("session_init", s.id),
        ("resource_register", res.id),
        ("resource_unregister", res.id),
        ("session_release", s.id),
    ]


def test_genop_by_name_method_and_upstream_code() -> None:
    registry = make_registry()
    with session(registry) as s:
        assert s.genop("image_classify", b"x")[0] == "This is a dummy classification tag!"
        assert s.genop("classify", b"x")[1] == "This is a dummy imgname!"
        assert s.genop(3, b"x")[0] == s.genop(Op.IMAGE_CLASSIFY, b"x")[0]
        assert s.genop("VACCEL_OP_NOOP") is None


def test_threads_get_unique_ids_and_share_a_session_safely() -> None:
    registry = make_registry()
    ids: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with session(registry) as s:
                ids.append(s.id)
                for _ in range(200):
                    s.noop()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(set(ids)) == 8


def test_default_registry_from_entry_points_serves_noop() -> None:
    with Session() as s:
        s.noop()
        assert s.backend_for(Op.NOOP).name in {b.name for b in s.backends}


def test_profiling_regions_format() -> None:
    registry = make_registry()
    with session(registry, profiling=True) as s:
        for _ in range(3):
            s.noop()
        s.classify(b"abc")
        regions = {r.name: r for r in s.profile()}
    assert regions["noop"].entries == 3
    assert regions["image_classify"].entries == 1
    line = regions["noop"].format()
    assert line.startswith("[prof] noop: total_time: ") and line.endswith(" nsec nr_entries: 3")
    with session(registry) as quiet:
        quiet.noop()
        assert quiet.profile() == []
