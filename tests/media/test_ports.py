"""The RTP port pool over real sockets on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from sipclient.config import PortRange
from sipclient.media.ports import PortPool, PortsExhausted


def test_leases_are_distinct_even_and_really_bound(port_range: PortRange) -> None:
    pool = PortPool(port_range, "127.0.0.1")
    leases = [pool.allocate() for _ in range(3)]
    ports = [lease.port for lease in leases]
    assert len(set(ports)) == 3
    assert all(p % 2 == 0 and port_range.low <= p <= port_range.high for p in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", ports[0]))
    for lease in leases:
        lease.release()
    assert pool.in_use == 0


def test_ports_held_by_other_programs_are_skipped(port_range: PortRange) -> None:
    pool = PortPool(port_range, "127.0.0.1", first=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port_range.low))  # even: the pool's first choice
        lease = pool.allocate()
        assert lease.port != port_range.low
        lease.release()


def test_exhaustion_raises_a_documented_error_and_release_recovers(port_range: PortRange) -> None:
    pool = PortPool(PortRange(port_range.low, port_range.low + 3), "127.0.0.1")
    assert pool.size == 2
    first, second = pool.allocate(), pool.allocate()
    with pytest.raises(PortsExhausted) as info:
        pool.allocate()
    assert "rtp.ports" in str(info.value)
    assert info.value.in_use == 2
    assert isinstance(info.value, RuntimeError)
    first.release()
    third = pool.allocate()
    assert third.port == first.port
    second.release()
    third.release()
    third.release()  # twice is harmless
    assert pool.in_use == 0


def test_a_released_port_is_not_the_next_one_handed_out(port_range: PortRange) -> None:
    pool = PortPool(port_range, "127.0.0.1")
    a = pool.allocate()
    a.release()
    b = pool.allocate()
    assert b.port != a.port
    b.release()


def test_socket_is_handed_over_once(port_range: PortRange) -> None:
    pool = PortPool(port_range, "127.0.0.1")
    lease = pool.allocate()
    sock = lease.take_socket()
    with pytest.raises(RuntimeError):
        lease.take_socket()
    sock.close()
    lease.release()


def test_a_range_without_even_ports_uses_odd_ones(port_range: PortRange) -> None:
    odd = port_range.low + 1
    pool = PortPool(PortRange(odd, odd), "127.0.0.1")
    lease = pool.allocate()
    assert lease.port == odd
    lease.release()


def test_the_walk_starts_at_a_random_port_so_a_restart_does_not_reuse_the_same_first(
    port_range: PortRange,
) -> None:
    firsts = set()
    for _ in range(20):  # 20 daemons starting: their first ports are not all the same
        lease = PortPool(port_range, "127.0.0.1").allocate()
        firsts.add(lease.port)
        lease.release()
    assert len(firsts) > 1


def test_exhaustion_message_counts_ports_held_by_others(port_range: PortRange) -> None:
    pool = PortPool(PortRange(port_range.low, port_range.low + 3), "127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port_range.low + 2))
        lease = pool.allocate()
        with pytest.raises(PortsExhausted, match="1 of 2 leased to our calls, 1 held by other"):
            pool.allocate()
        lease.release()
