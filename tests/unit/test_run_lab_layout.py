"""Which lab host holds which group: layout parsing and assignment (pure)."""

from __future__ import annotations

import pytest

from kit.lab import LayoutError, assign_groups, default_layout, parse_layout


def test_the_default_six_host_lab_gives_generators_hosts_of_their_own_and_sim_shares_redis():
    groups = assign_groups(6, default_layout(6))
    assert groups == {"redis": [1], "haproxy": [2], "wsproxy": [3, 4], "sim": [1], "generators": [5, 6]}


def test_more_hosts_become_generators_and_fewer_hosts_hold_several_roles():
    assert default_layout(9)["generators"] == 4
    assert assign_groups(9, default_layout(9))["sim"] == [9]
    one = assign_groups(1, default_layout(1))
    assert all(hosts == [1] for hosts in one.values())
    three = assign_groups(3, default_layout(3))
    assert sorted({h for hs in three.values() for h in hs}) == [1, 2, 3]
    assert all(len(set(hs)) == len(hs) for hs in three.values())


def test_an_explicit_layout_is_parsed_and_assigned_in_slot_order():
    lay = parse_layout("redis=1, haproxy=2,wsproxy=3,sim=2,generators=3")
    assert list(lay) == ["redis", "haproxy", "wsproxy", "sim", "generators"]
    groups = assign_groups(11, lay)
    assert groups["haproxy"] == [2, 3] and groups["generators"] == [7, 8, 9] and groups["sim"] == [10, 11]


@pytest.mark.parametrize(
    "text, says",
    [
        ("redis=1,haproxy=1,wsproxy=2,sim=1", "misses group"),
        ("redis=1,haproxy=1,wsproxy=2,sim=1,generators=2,db=1", "unknown group 'db'"),
        ("redis=1,redis=2,haproxy=1,wsproxy=1,sim=1,generators=1", "twice"),
        ("redis,haproxy=1", "not group=count"),
        ("redis=x,haproxy=1", "not a whole number"),
        ("redis=0,haproxy=1,wsproxy=1,sim=1,generators=1", "at least 1"),
    ],
)
def test_a_bad_layout_names_the_problem(text, says):
    with pytest.raises(LayoutError, match=says):
        parse_layout(text)


def test_a_layout_that_leaves_hosts_idle_or_needs_more_hosts_is_refused():
    lay = parse_layout("redis=1,haproxy=1,wsproxy=1,sim=1,generators=1")
    with pytest.raises(LayoutError, match="lower --hosts to 5"):
        assign_groups(7, lay)
    with pytest.raises(LayoutError, match="wsproxy=3 but the lab has 2"):
        assign_groups(2, parse_layout("redis=1,haproxy=1,wsproxy=3,sim=1,generators=1"))
    with pytest.raises(LayoutError, match="--hosts"):
        default_layout(0)


def test_the_optional_monitoring_group_takes_0_or_1_host_and_the_last_slot():
    from kit.lab._layout import LayoutError, assign_groups, parse_layout

    base = "redis=1,haproxy=1,wsproxy=1,sim=1,generators=1"
    assert "monitoring" not in parse_layout(base) and "monitoring" not in parse_layout(base + ",monitoring=0")
    layout = parse_layout(base + ",monitoring=1")
    assert layout["monitoring"] == 1
    # 4 hosts: redis 1, haproxy 2, wsproxy 3, generators 4, sim wraps to 1, monitoring to 2
    assert assign_groups(4, layout)["monitoring"] == [2]
    with pytest.raises(LayoutError, match="monitoring group has 0 or 1 host"):
        parse_layout(base + ",monitoring=2")
