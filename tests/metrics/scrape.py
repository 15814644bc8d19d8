"""Helpers of the metrics tests: a free port, scraping a real endpoint over HTTP and parsing
it with prometheus-client's own parser, and the TCP sockets a process listens on."""

from __future__ import annotations

import os
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.remote.conftest import AgentProcess

#: The line ``vaccel-agent`` prints once its metrics endpoint serves.
SERVING = r"^Serving metrics on '(http://[^']+)'$"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Scrape:
    """One scrape: families by name (a counter by its name with ``_total``), and samples."""

    text: str
    types: dict[str, str] = field(default_factory=dict)
    #: sample name -> {sorted label items: value}
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)

    def values(self, name: str, drop: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
        """Sample ``name``'s values keyed by its label values (in label-name order), without
        the labels in ``drop`` (e.g. ``le``)."""
        out: dict[tuple[str, ...], float] = {}
        for labels, value in self.samples.get(name, {}).items():
            key = tuple(v for k, v in labels if k not in drop)
            out[key] = value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name][tuple(sorted(labels.items()))]


def scrape(url: str) -> Scrape:
    """GET ``url`` and parse it with ``prometheus_client.parser``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    result = Scrape(text)
    for family in text_string_to_metric_families(text):
        exposed = family.name + ("_total" if family.type == "counter" else "")
        result.types[exposed] = family.type
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            result.samples.setdefault(sample.name, {})[labels] = sample.value
    return result


def metrics_url(agent: AgentProcess) -> str:
    """The URL the agent printed for its metrics endpoint."""
    import re

    line = agent.wait_for_log(SERVING)
    match = re.match(SERVING, line)
    assert match is not None
    return match.group(1)


def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its socket inodes in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
