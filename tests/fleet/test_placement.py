"""Placement without agents: the list's checks, DNS re-resolution (a stand-in resolver and
clock: the resolver's answers are what is under test), backoff and the policies' order."""

from __future__ import annotations

import socket

import pytest

from vaccel_core.errors import InvalidArgumentError, RemoteError
from vaccel_core.transport import Address
from vaccel_plugins.rpc.placement import (
    LEAST_CALLS,
    ROUND_ROBIN,
    Agent,
    AgentList,
    Backoff,
    Placement,
    parse_entries,
    placement_policy,
    resolve,
)
from vaccel_plugins.rpc.settings import client_options
from vaccel_plugins.rpc.upstream import upstream_address

SCHEMES = ("unix", "tcp", "vsock", "virtio-mock")


def entries(value: str, parse: object = Address.parse) -> list:
    return parse_entries(value, parse, lambda: SCHEMES)  # type: ignore[arg-type]


# The list ---------------------------------------------------------------------------------------
def test_single_address_is_one_fixed_entry_with_its_own_errors() -> None:
    (entry,) = entries("unix:///run/a.sock")
    assert (entry.text, entry.host) == ("unix:///run/a.sock", None)
    with pytest.raises(InvalidArgumentError, match=r"^address: expected SCHEME://TARGET"):
        entries("nonsense")


def test_list_entries_in_order_names_become_dns_entries() -> None:
    got = entries("unix:///a.sock, tcp://127.0.0.1:1 ,tcp://agents.example:50051,vsock://2:2048")
    assert [e.text for e in got] == [
        "unix:///a.sock",
        "tcp://127.0.0.1:1",
        "tcp://agents.example:50051",
        "vsock://2:2048",
    ]
    assert [(e.host, e.port) for e in got] == [
        (None, 0),
        (None, 0),
        ("agents.example", 50051),
        (None, 0),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("unix:///a,,unix:///b", r"entry 2 of 3 is empty"),
        ("unix:///a,", r"entry 2 of 2 is empty"),
        (",unix:///a", r"entry 1 of 2 is empty"),
        ("unix:///a,unix:///a", r"entry 2 of 2 \('unix:///a'\) names the same agent"),
        ("tcp://1.2.3.4:5, tcp://1.2.3.4:5", r"entry 2 of 2 .* names the same agent"),
        (
            "unix:///a,http://b:80",
            r"entry 2 of 2 \('http://b:80'\): no transport for scheme 'http'",
        ),
        ("unix:///a,nonsense", r"entry 2 of 2 \('nonsense'\): address: expected SCHEME://TARGET"),
        (
            "unix:///a,tcp://host",
            r"entry 2 of 2 \('tcp://host'\): address: expected tcp://HOST:PORT",
        ),
        ("unix:///a,spdy+unix:///b", r"entry 2 of 2 .*unknown protocol 'spdy'"),
    ],
)
def test_bad_lists_name_the_variable_and_the_entry(value: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        entries(value)
    assert info.value.message.startswith(f"VACCEL_RPC_ADDRESS={value!r}: entry ")


def test_upstream_lists_refuse_grpc_entries_by_name() -> None:
    with pytest.raises(InvalidArgumentError, match=r"entry 2 of 2 .*speak ttrpc only"):
        entries("unix:///a,grpc+unix:///b", upstream_address)


def test_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert placement_policy() == LEAST_CALLS
    monkeypatch.setenv("VACCEL_RPC_PLACEMENT", "Round-Robin")
    assert placement_policy() == ROUND_ROBIN
    monkeypatch.setenv("VACCEL_RPC_PLACEMENT", "random")
    with pytest.raises(InvalidArgumentError, match=r"VACCEL_RPC_PLACEMENT: expected .*'random'"):
        placement_policy()


# DNS --------------------------------------------------------------------------------------------
class StandInDns:
    """LABELLED STAND-IN for a DNS server whose answers the test changes, and a clock."""

    def __init__(self, answer: list[str]) -> None:
        self.answer = answer
        self.now = 0.0
        self.lookups = 0

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups += 1
        if isinstance(self.answer, OSError):
            raise self.answer
        return list(self.answer)


def dns_list(dns: StandInDns, value: str = "unix:///fixed,tcp://agents.svc:50051") -> AgentList:
    return AgentList(
        value, entries(value), refresh=10.0, resolver=dns.resolve, clock=lambda: dns.now
    )


def addresses(agents: list[Agent]) -> list[str]:
    return [a.address for a in agents]


def test_names_are_resolved_again_after_the_refresh_period() -> None:
    dns = StandInDns(["10.0.0.1", "10.0.0.2"])
    fleet = dns_list(dns)
    assert addresses(fleet.agents()) == [
        "unix:///fixed",
        "tcp://10.0.0.1:50051",
        "tcp://10.0.0.2:50051",
    ]
    dns.answer = ["10.0.0.2", "10.0.0.3", "fd00::7"]
    dns.now = 9.9
    assert len(fleet.agents()) == 3 and dns.lookups == 1  # not yet
    dns.now = 10.0
    assert addresses(fleet.agents()) == [
        "unix:///fixed",
        "tcp://10.0.0.2:50051",
        "tcp://10.0.0.3:50051",
        "tcp://[fd00::7]:50051",
    ]
    assert dns.lookups == 2
    # the agents found under a name are checked against it (TLS server name)
    assert {a.server_name for a in fleet.agents()} == {None, "agents.svc"}


def test_failed_lookup_keeps_the_last_answer_and_no_answer_ever_is_a_clear_error() -> None:
    dns = StandInDns(["10.0.0.1"])
    fleet = dns_list(dns)
    fleet.agents()
    dns.answer = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")  # type: ignore[assignment]
    dns.now = 20.0
    assert addresses(fleet.agents()) == ["unix:///fixed", "tcp://10.0.0.1:50051"]
    lonely = StandInDns(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))  # type: ignore[arg-type]
    with pytest.raises(
        RemoteError,
        match=r"VACCEL_RPC_ADDRESS='tcp://agents.svc:50051': no agent: tcp://agents.svc:50051: "
        r"'agents.svc' resolved to no address",
    ):
        dns_list(lonely, "tcp://agents.svc:50051").agents()


def test_protocol_prefix_is_kept_on_resolved_agents() -> None:
    dns = StandInDns(["127.0.0.1"])
    assert addresses(dns_list(dns, "ttrpc+tcp://agents.svc:1").agents()) == [
        "ttrpc+tcp://127.0.0.1:1"
    ]


def test_the_real_resolver_answers_localhost() -> None:
    ips = resolve("localhost", 80)
    assert ips and all(ip in ("127.0.0.1", "::1") for ip in ips)
    with pytest.raises(OSError):
        resolve("no-such-host.invalid", 80)


def test_tls_checks_the_dns_name_unless_told_another(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client_options("agents.svc").tls is None  # no TLS asked: the name turns none on
    monkeypatch.setenv("VACCEL_RPC_TLS", "1")
    tls = client_options("agents.svc").tls
    assert tls is not None and tls.server_name == "agents.svc"
    monkeypatch.setenv("VACCEL_RPC_TLS_SERVER_NAME", "vaccel-agent")
    tls = client_options("agents.svc").tls
    assert tls is not None and tls.server_name == "vaccel-agent"


# Backoff and order ------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_ten_seconds_and_ends_when_reached() -> None:
    clock = Clock()
    backoff = Backoff(clock)
    waits = []
    for _ in range(6):
        backoff.failed("a")
        waits.append(backoff.until("a") - clock.now)
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reached("a")
    assert backoff.until("a") < clock.now
    backoff.failed("a")
    assert backoff.until("a") - clock.now == 1.0


AGENTS = [Agent("unix:///a"), Agent("unix:///b"), Agent("unix:///c")]


def test_round_robin_rotates_over_every_agent() -> None:
    placement = Placement(ROUND_ROBIN, Backoff(Clock()))
    firsts = [placement.order(AGENTS, lambda a: (0, 0))[0].address for _ in range(6)]
    assert sorted(firsts[:3]) == ["unix:///a", "unix:///b", "unix:///c"]
    assert firsts[3:] == firsts[:3]


def test_least_calls_prefers_fewest_calls_then_fewest_sessions() -> None:
    placement = Placement(LEAST_CALLS, Backoff(Clock()))
    load = {"unix:///a": (2, 0), "unix:///b": (0, 5), "unix:///c": (0, 1)}
    for _ in range(3):  # whatever the rotation
        assert addresses(placement.order(AGENTS, load.__getitem__)) == [
            "unix:///c",
            "unix:///b",
            "unix:///a",
        ]


def test_agents_backing_off_come_last_soonest_first() -> None:
    clock = Clock()
    backoff = Backoff(clock)
    backoff.failed("unix:///a")
    backoff.failed("unix:///b")
    backoff.failed("unix:///b")  # b waits longer than a
    placement = Placement(LEAST_CALLS, backoff)
    assert addresses(placement.order(AGENTS, lambda a: (0, 0))) == [
        "unix:///c",
        "unix:///a",
        "unix:///b",
    ]
    clock.now += 1.0  # a's backoff is over: it is tried again, and first (no load)
    order = addresses(
        placement.order(
            AGENTS, {"unix:///a": (0, 0), "unix:///b": (0, 0), "unix:///c": (0, 1)}.__getitem__
        )
    )
    assert order == ["unix:///a", "unix:///c", "unix:///b"]
