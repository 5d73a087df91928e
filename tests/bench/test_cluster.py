from __future__ import annotations

import pytest
import redis

from bench.cluster import BUS_OFFSET, PORT_RANGE, SLOTS, cluster_port, slot_ranges


@pytest.mark.parametrize("masters", [1, 3, 7])
def test_slot_ranges_cover_every_slot_once(masters: int) -> None:
    ranges = slot_ranges(masters)
    assert len(ranges) == masters and ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in zip(ranges, ranges[1:], strict=False))


def test_a_cluster_port_leaves_room_for_the_bus() -> None:
    port = cluster_port()
    assert PORT_RANGE[0] <= port <= PORT_RANGE[1] and port + BUS_OFFSET <= 65535


def test_the_embedded_cluster_is_three_masters_serving_every_slot(redis_cluster_url: str) -> None:
    nodes = redis_cluster_url.removeprefix("redis+cluster://").split(",")
    assert len(nodes) == 3
    with redis.RedisCluster.from_url("redis://" + nodes[0], decode_responses=True) as client:
        primaries = client.get_primaries()
        assert sorted(f"{n.host}:{n.port}" for n in primaries) == sorted(nodes)
        assert client.cluster_info()["cluster_state"] == "ok"
        client.set("{h3}:probe", "1")
        assert client.get("{h3}:probe") == "1"
