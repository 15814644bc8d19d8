"""Our guest in upstream mode (``rpc-upstream``) against OUR agent, which serves upstream's
AgentService beside its own (agent/upstream/): the two sides of issue 11 must agree. Every
operation the upstream mode forwards gives the same results as our own client (``rpc``) on the
same agent, over unix and over the vsock path (hybrid-vsock routing, tests/remote/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("google.protobuf", reason="the upstream schema needs protobuf (remote extra)")
if not (Path(__file__).resolve().parents[2] / "agent" / "upstream").is_dir():
    # Lifts itself: the agent side (agent/upstream/) is another change of the same issue.
    pytest.skip("agent side of issue 11 not landed yet", allow_module_level=True)

from tests.catalog_samples import PNG_1PX, sample_args
from tests.onnxruntime.ort_fixtures import (
    model_cache_folder,
    photo,
    require_weights,
    tag_name,
)
from tests.remote.conftest import HYBRID_VSOCK, AgentProcess, start_agent
from vaccel_core import (
    Config,
    NotSupportedError,
    Op,
    PluginType,
    Resource,
    ResourceType,
    Session,
    VaccelError,
)
from vaccel_plugins.rpc.genop_pack import PACKERS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with the classifier built when its weights are installed."""
    return model_cache_folder(tmp_path_factory, weights_required=False)


def _agent(plugins: str, cache: Path, factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    sock = factory.mktemp("agent") / "agent.sock"
    handle = start_agent(
        [f"unix://{sock}"], env={"VACCEL_PLUGINS": plugins, "VACCEL_CACHE_DIR": str(cache)}
    )
    yield handle
    assert handle.stop() == 0, handle.log


@pytest.fixture(scope="module")
def agent(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """onnxruntime (classify, sgemm, minmax) with noop behind it (every other operation)."""
    yield from _agent("onnxruntime:noop", model_cache, tmp_path_factory)


@pytest.fixture(scope="module")
def ort_agent(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """onnxruntime only: the model operations of upstream's RPCs have no backend there."""
    yield from _agent("onnxruntime", model_cache, tmp_path_factory)


@pytest.fixture(params=["unix", "vsock"])
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "vsock":
        from vaccel_transports.vsock import VsockTransport

        monkeypatch.setattr(
            VsockTransport,
            "open_stream",
            lambda _self, t, timeout: HYBRID_VSOCK.open_stream(t, timeout),
        )
    return str(request.param)


def dial(agent: AgentProcess, wire: str) -> str:
    """Where a guest dials ``agent`` over ``wire``."""
    path = agent.addresses[0][len("unix://") :]
    return f"unix://{path}" if wire == "unix" else f"vsock://2:{HYBRID_VSOCK.port_of(path)}"


def sessions(agent: AgentProcess, wire: str) -> tuple[Session, Session]:
    """(upstream mode, our own protocol) sessions on ``agent``."""
    address = dial(agent, wire)
    upstream_mode = Session(
        PluginType.REMOTE, config=Config(plugins=["rpc-upstream"], rpc_address=address)
    )
    ours = Session(PluginType.REMOTE, config=Config(plugins=["rpc"], rpc_address=address))
    return upstream_mode, ours


@pytest.fixture
def pair(agent: AgentProcess, wire: str) -> Iterator[tuple[Session, Session]]:
    upstream_mode, ours = sessions(agent, wire)
    with upstream_mode, ours:
        yield upstream_mode, ours


def same(a: Any, b: Any) -> None:
    """Results equal, arrays included (element-wise, same dtype and shape)."""
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), (a, b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6)
    else:
        assert a == b


def outcome(session: Session, op: Op, args: Sequence[Any]) -> Any:
    """What ``op`` gives: its result, or its error's class and code (messages differ: each
    names its own wire)."""
    try:
        return ("ok", session.genop(op, *args))
    except VaccelError as exc:
        return ("error", type(exc).__name__, exc.code)


#: The operations upstream mode sends through Genop, with arguments its layouts express.
GENOP_OPS = sorted(PACKERS, key=lambda op: op.value)


@pytest.mark.parametrize("op", GENOP_OPS, ids=lambda op: op.value)
def test_genop_operations_agree_with_our_client(pair: tuple[Session, Session], op: Op) -> None:
    upstream_mode, ours = pair
    if op is Op.EXEC_WITH_RESOURCE:  # a LIB resource registered with each session
        lib = Resource.from_buffer(b"LIB bytes", ResourceType.LIB, "libmytestlib.so")
        lib.register(upstream_mode)
        lib.register(ours)
        args: list[Any] = [lib, "mytestfunc", [b"abc"], [8]]
    elif op is Op.FPGA_MMULT:  # upstream's layout: square matrices only
        square = np.arange(9, dtype=np.float32).reshape(3, 3)
        args = [square, square]
    else:  # no resource registered: onnxruntime would take a MODEL one as its classifier
        args = list(sample_args(op, {t: Resource.from_buffer(b"x", t) for t in ResourceType}))
    same(outcome(upstream_mode, op, args), outcome(ours, op, args))


def test_classify_the_bundled_photo_gives_our_clients_tags(pair: tuple[Session, Session]) -> None:
    require_weights()
    upstream_mode, ours = pair
    image = photo("dog.jpg")
    tags, imgname = upstream_mode.classify(image)
    assert (tags, imgname) == ours.classify(image)
    tag_name(tags)


def test_sgemm_matches_numpy(pair: tuple[Session, Session]) -> None:
    upstream_mode, _ = pair
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 3), dtype=np.float32)
    b = rng.standard_normal((3, 6), dtype=np.float32)
    c = rng.standard_normal((4, 6), dtype=np.float32)
    got = upstream_mode.sgemm(a, b, c, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(got, 0.5 * a @ b + 2.0 * c, rtol=1e-5, atol=1e-5)


def test_noop_stays_local(pair: tuple[Session, Session]) -> None:
    upstream_mode, ours = pair
    ours.noop()
    with pytest.raises(NotSupportedError, match="noop: no selected backend implements"):
        upstream_mode.noop()


def test_resources_and_model_operations(pair: tuple[Session, Session], tmp_path: Path) -> None:
    upstream_mode, ours = pair
    model = tmp_path / "cnn_trace.pt"
    model.write_bytes(b"torchscript bytes")
    resource = Resource(model, ResourceType.MODEL)
    resource.register(upstream_mode)
    resource.register(ours)
    backend: Any = upstream_mode.backends[0]
    assert backend.resource_sync(upstream_mode, resource) == [("cnn_trace.pt", model.read_bytes())]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for op, args in (
        (Op.TORCH_MODEL_LOAD, (resource,)),
        (Op.TORCH_MODEL_RUN, (resource, [x])),
        (Op.TFLITE_MODEL_LOAD, (resource,)),
        (Op.TFLITE_MODEL_RUN, (resource, [x])),
        (Op.TFLITE_MODEL_UNLOAD, (resource,)),
        (Op.TF_MODEL_LOAD, (resource,)),
        (Op.TF_MODEL_RUN, (resource, ["in:0"], [x], ["out:0"])),
        (Op.TF_MODEL_UNLOAD, (resource,)),
    ):
        same(outcome(upstream_mode, op, args), outcome(ours, op, args))
    resource.unregister(upstream_mode)
    assert backend.session_update(upstream_mode, int(PluginType.CPU)) == []


def test_model_operations_without_a_backend_are_not_supported(
    ort_agent: AgentProcess, wire: str
) -> None:
    upstream_mode, ours = sessions(ort_agent, wire)
    with upstream_mode, ours:
        resource = Resource.from_buffer(b"model", ResourceType.MODEL, "m.pt")
        resource.register(upstream_mode)
        with pytest.raises(NotSupportedError, match=r"torch_model_load: .*ENOTSUP"):
            upstream_mode.torch_model_load(resource)
        with pytest.raises(NotSupportedError, match=r"detect: .*ENOTSUP"):
            upstream_mode.detect(PNG_1PX)
