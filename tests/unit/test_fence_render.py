"""The nftables text of the lease fence (pure: no root, no nft)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from vigil.address.fence import FenceError, render_remove, render_renew, render_ruleset
from vigil.address.fence import _one_line as one_line

VIP1 = IPv4Address("10.213.99.10")
VIP2 = IPv4Address("10.213.99.11")


def test_ruleset_is_the_idempotent_install_transaction() -> None:
    text = render_ruleset("eth0", "vigil", [VIP2, VIP1, VIP1])
    lines = [ln.strip() for ln in text.splitlines()]
    assert lines[:3] == [
        "add table netdev vigil",
        "delete table netdev vigil",
        "table netdev vigil {",
    ]
    # deduplicated and sorted, so the text is deterministic
    assert "elements = { 10.213.99.10, 10.213.99.11 }" in lines
    assert (
        'type filter hook ingress device "eth0" priority -500; policy accept;' in lines
        and 'type filter hook egress device "eth0" priority -500; policy accept;' in lines
    )
    for rule in (
        "arp daddr ip @vips arp daddr ip != @leased drop",
        "ip daddr @vips ip daddr != @leased drop",
        "arp saddr ip @vips arp saddr ip != @leased drop",
        "ip saddr @vips ip saddr != @leased drop",
    ):
        assert lines.count(rule) == 1
    assert text.endswith("}\n")
    assert text.count("{") == text.count("}")


def test_ruleset_leased_starts_empty_with_timeouts() -> None:
    text = render_ruleset("eth0", "vigil", [VIP1])
    leased = text.split("set leased {", 1)[1].split("}", 1)[0]
    assert "flags timeout" in leased
    assert "elements" not in leased


def test_ruleset_without_vips_has_no_empty_element_list() -> None:
    text = render_ruleset("eth0", "vigil", [])
    assert "elements" not in text
    assert "{ }" not in text


def test_ruleset_custom_table_and_device() -> None:
    text = render_ruleset("veth-a1", "vigil_veth", [VIP1])
    assert "table netdev vigil_veth {" in text
    assert 'device "veth-a1"' in text


@pytest.mark.parametrize(
    "ifname", ["", "a" * 16, 'eth"0', "eth 0", "eth/0", "..", "a\nb", "eth0\n"]
)
def test_bad_interface_names_are_rejected(ifname: str) -> None:
    with pytest.raises(ValueError):
        render_ruleset(ifname, "vigil", [VIP1])


@pytest.mark.parametrize("table", ["", "1abc", "vi gil", "vigil;", "a-b", "x" * 65, "vigil\n"])
def test_bad_table_names_are_rejected(table: str) -> None:
    with pytest.raises(ValueError):
        render_ruleset("eth0", table, [VIP1])
    with pytest.raises(ValueError):
        render_renew(table, [VIP1], 100, [VIP1])
    with pytest.raises(ValueError):
        render_remove(table)


def test_renew_is_one_transaction_flush_then_refill() -> None:
    text = render_renew("vigil", [VIP1], 300, [VIP2, VIP1])
    assert text.splitlines() == [
        "flush set netdev vigil vips",
        "flush set netdev vigil leased",
        "add element netdev vigil vips { 10.213.99.10, 10.213.99.11 }",
        "add element netdev vigil leased { 10.213.99.10 timeout 300ms }",
    ]


def test_renew_every_leased_element_gets_the_ttl() -> None:
    text = render_renew("vigil", [VIP2, VIP1], 1500, [VIP1, VIP2])
    assert (
        "add element netdev vigil leased "
        "{ 10.213.99.10 timeout 1500ms, 10.213.99.11 timeout 1500ms }" in text
    )


def test_renew_with_empty_iterables_omits_the_add_lines() -> None:
    assert render_renew("vigil", [], 300, []).splitlines() == [
        "flush set netdev vigil vips",
        "flush set netdev vigil leased",
    ]
    only_vips = render_renew("vigil", iter([]), 300, iter([VIP1]))
    assert "leased {" not in only_vips
    assert "add element netdev vigil vips { 10.213.99.10 }" in only_vips
    assert "{ }" not in only_vips


def test_renew_accepts_generators() -> None:
    text = render_renew("vigil", (v for v in [VIP1]), 300, (v for v in [VIP1]))
    assert "10.213.99.10 timeout 300ms" in text


@pytest.mark.parametrize("ttl", [0, -1, True, 1.5])
def test_renew_rejects_bad_ttl(ttl: object) -> None:
    with pytest.raises(ValueError):
        render_renew("vigil", [VIP1], ttl, [VIP1])  # type: ignore[arg-type]


def test_remove_is_idempotent_text() -> None:
    assert render_remove("vigil") == "add table netdev vigil\ndelete table netdev vigil\n"


def test_nft_stderr_is_folded_on_one_line() -> None:
    stderr = (
        "/dev/stdin:1:18-22: Error: No such file or directory\n"
        "flush set netdev vigil vips\n"
        "                 ^^^^^\n"
    )
    line = one_line(stderr)
    assert "\n" not in line
    assert "No such file or directory" in line
    assert "^" not in line
    assert issubclass(FenceError, Exception)
