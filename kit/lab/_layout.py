"""Which lab host holds which inventory group (pure; no I/O).

A layout is an ordered mapping group -> number of hosts, written on the command
line as ``"redis=1,haproxy=1,wsproxy=2,sim=1,generators=2"``.  Hosts are handed
out one slot per host in :data:`SLOT_ORDER` (the simulator last, so a small lab
doubles it up with Redis, the lightest neighbours, and generators keep hosts of
their own); when there are fewer hosts than slots the assignment wraps around,
so one host may hold several roles (never the same group twice).  An optional group
(:data:`OPTIONAL`: ``monitoring``) may be named with 0 or 1 host; it takes the last slot.
"""

from __future__ import annotations

from kit import contract

__all__ = ["GROUPS", "OPTIONAL", "LayoutError", "parse_layout", "default_layout", "assign_groups", "MAX_HOSTS"]

#: The inventory groups the playbooks know, in deployment order (the contract's kit_groups).
GROUPS: tuple[str, ...] = contract.groups()
#: Groups a layout may name with 0 or 1 host (the contract's kit_optional_groups).
OPTIONAL: tuple[str, ...] = contract.optional_groups()

#: Order in which hosts are handed out.
SLOT_ORDER: tuple[str, ...] = ("redis", "haproxy", "wsproxy", "generators", "sim", *OPTIONAL)

#: Addresses .11 .. .210 of the lab's /24.
MAX_HOSTS = 200


class LayoutError(ValueError):
    """A layout or host count is malformed; the message says what and how to fix it."""


def check_hosts(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > MAX_HOSTS:
        raise LayoutError(f"--hosts {n!r}: give a whole number from 1 to {MAX_HOSTS}")
    return n


def parse_layout(text: str) -> dict[str, int]:
    """Parse ``"redis=1,haproxy=1,..."``; every group of :data:`GROUPS` must appear, each at least once."""
    layout: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, count = part.partition("=")
        name = name.strip()
        if not sep:
            raise LayoutError(f"layout item {part!r} is not group=count: write e.g. 'wsproxy=2'")
        if name not in GROUPS + OPTIONAL:
            raise LayoutError(f"layout names unknown group {name!r}: use {', '.join(GROUPS + OPTIONAL)}")
        if name in layout:
            raise LayoutError(f"layout names group {name!r} twice: give it once")
        try:
            value = int(count.strip())
        except ValueError:
            raise LayoutError(f"layout count {count.strip()!r} for {name} is not a whole number") from None
        if name in OPTIONAL and value not in (0, 1):
            raise LayoutError(f"layout gives {name}={value}: the {name} group has 0 or 1 host")
        if value < 1 and name not in OPTIONAL:
            raise LayoutError(f"layout gives {name}={value}: every group needs at least 1 host")
        layout[name] = value
    missing = [g for g in GROUPS if g not in layout]
    if missing:
        raise LayoutError(f"layout misses group(s) {', '.join(missing)}: every group needs at least 1 host")
    return {g: layout[g] for g in GROUPS + OPTIONAL if layout.get(g)}


def default_layout(n: int) -> dict[str, int]:
    """redis, haproxy, 2 wsproxy, sim, 2 generators (7 roles: on 6 hosts sim shares Redis's host);
    every host past 7 is one more generator."""
    check_hosts(n)
    base = {"redis": 1, "haproxy": 1, "wsproxy": 2, "sim": 1, "generators": max(2, n - 5)}
    return {g: min(c, n) for g, c in base.items()}


def assign_groups(n: int, layout: dict[str, int]) -> dict[str, list[int]]:
    """Return group -> host indices (1-based).  Every host gets at least one group."""
    check_hosts(n)
    slots = sum(layout.values())
    if slots < n:
        raise LayoutError(
            f"layout assigns {slots} host slot(s) but --hosts is {n}: raise a group's count "
            f"(e.g. generators={layout.get('generators', 1) + n - slots}) or lower --hosts to {slots}"
        )
    groups: dict[str, list[int]] = {}
    slot = 0
    for group in SLOT_ORDER:
        count = layout.get(group, 0)
        if count > n:
            raise LayoutError(f"layout gives {group}={count} but the lab has {n} host(s): raise --hosts or lower it")
        groups[group] = []
        for _ in range(count):
            groups[group].append(slot % n + 1)
            slot += 1
        groups[group].sort()
    return {g: groups[g] for g in GROUPS + OPTIONAL if groups[g]}
