"""Metrics of real backends and of upstream's guests: the onnxruntime backend's execution
providers and classify calls, and upstream vAccel's methods over ttrpc, each scraped from a
real agent process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.onnxruntime.ort_fixtures import model_cache_folder
from tests.remote.conftest import AgentProcess, missing_remote_extra, start_agent
from vaccel_core import Config, Session

from .scrape import metrics_url, scrape

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(missing_remote_extra() is not None, reason=str(missing_remote_extra())),
]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with the classifier built (skips without onnxruntime or its weights)."""
    return model_cache_folder(tmp_path_factory)


@pytest.fixture
def ort_agent(model_cache: Path, tmp_path: Path) -> Iterator[AgentProcess]:
    env = {
        "VACCEL_PLUGINS": "onnxruntime",
        "VACCEL_CACHE_DIR": str(model_cache),
        "VACCEL_ORT_PROVIDERS": "CPUExecutionProvider",
    }
    handle = start_agent(
        [f"unix://{tmp_path / 'agent.sock'}"],
        env=env,
        args=["--metrics-address", "tcp://127.0.0.1:0"],
    )
    yield handle
    assert handle.stop() == 0, handle.log


def test_classify_and_the_providers_in_use(ort_agent: AgentProcess) -> None:
    from tests.onnxruntime.ort_fixtures import photo

    url = metrics_url(ort_agent)
    before = scrape(url)
    assert before.value("vaccel_agent_backend_available", backend="onnxruntime") == 1
    assert before.values("vaccel_agent_backend_provider_info") == {}, (
        "a scrape never starts a backend: no provider before the first session"
    )
    with Session(config=Config(plugins=["rpc"], rpc_address=ort_agent.addresses[0])) as guest:
        tags, _ = guest.classify(photo("dog.jpg"))
        assert "%" in tags
        got = scrape(url)
    assert got.values("vaccel_agent_backend_provider_info") == {
        ("onnxruntime", "CPUExecutionProvider"): 1
    }
    calls = got.values("vaccel_agent_calls_total")
    assert calls[("onnxruntime", "Run", "image_classify", "OK", "unix")] == 1
    assert (
        got.value(
            "vaccel_agent_call_duration_seconds_count",
            method="Run",
            operation="image_classify",
            backend="onnxruntime",
        )
        == 1
    )
    assert got.value("vaccel_agent_received_bytes_total", transport="unix") > len(
        photo("dog.jpg")
    ), "the image travelled in"


@pytest.fixture
def noop_agent(tmp_path: Path) -> Iterator[AgentProcess]:
    handle = start_agent(
        [f"unix://{tmp_path / 'agent.sock'}"], args=["--metrics-address", "tcp://127.0.0.1:0"]
    )
    yield handle
    assert handle.stop() == 0, handle.log


def test_upstream_methods_are_counted_with_their_operation(noop_agent: AgentProcess) -> None:
    from tests.upstream.client import UpstreamClient
    from tests.upstream.pipe import RawPipe, UpstreamError

    url = metrics_url(noop_agent)
    path = noop_agent.addresses[0][len("unix://") :]
    with UpstreamClient(RawPipe.unix(path)) as guest:
        session = guest.create_session()
        a = np.arange(6, dtype=np.float32).reshape(2, 3)
        b = np.ones((3, 2), dtype=np.float32)
        for _ in range(2):
            guest.sgemm(session, a, b, np.zeros((2, 2), np.float32))
        guest.image_classification(session, b"not really an image")
        with pytest.raises(UpstreamError) as unknown:
            guest.sgemm(session + 1, a, b, np.zeros((2, 2), np.float32))
        assert unknown.value.status == "NOT_FOUND"
        with pytest.raises(UpstreamError) as refused:
            guest.noop(session)  # upstream's genop refuses op type 0 (noop)
        assert refused.value.status == "INTERNAL"
        guest.destroy_session(session)
        got = scrape(url)
    assert got.values("vaccel_agent_calls_total") == {
        ("", "CreateSession", "", "OK", "unix"): 1,
        ("noop", "Genop", "blas_sgemm", "OK", "unix"): 2,
        ("noop", "ImageClassification", "image_classify", "OK", "unix"): 1,
        ("", "Genop", "", "NOT_FOUND", "unix"): 1,
        ("", "Genop", "", "INTERNAL", "unix"): 1,
        ("", "DestroySession", "", "OK", "unix"): 1,
    }
