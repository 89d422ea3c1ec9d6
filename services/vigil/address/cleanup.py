"""`vigil address --cleanup`: take a host back to how it was before the address service ran.

After `docker compose down` (or `systemctl stop vigil-address`) the VIPs the node held stay on
its interface and the ``vigil`` nftables table stays hooked on it: the fence keeps them silent
(their lease lapsed), but they are clutter, and a later non-Vigil use of those addresses would be
dropped. This reads the VIPs from the table itself (no bus needed), removes every one of them
from every interface, then deletes the table. Run it only where the address service is stopped.
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address
from socket import AF_INET

from pyroute2 import IPRoute

TABLE = "vigil"


def fenced_vips(table: str = TABLE) -> set[IPv4Address]:
    """The ``vips`` set of the netdev table (empty when there is no table)."""
    proc = subprocess.run(
        ["nft", "-j", "list", "set", "netdev", table, "vips"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return set()
    found: set[IPv4Address] = set()
    for item in json.loads(proc.stdout).get("nftables", []):
        for element in item.get("set", {}).get("elem", []):
            if isinstance(element, str):
                found.add(IPv4Address(element))
    return found


def cleanup(table: str = TABLE) -> list[str]:
    """Remove the fenced VIPs from every interface and delete the table; what was done, as lines."""
    vips = fenced_vips(table)
    done = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr(family=AF_INET):
            ip = IPv4Address(addr.get_attr("IFA_ADDRESS"))
            if ip in vips:
                ipr.addr("del", index=addr["index"], address=str(ip), mask=addr["prefixlen"])
                done.append(f"removed {ip}/{addr['prefixlen']} from {names.get(addr['index'])}")
    proc = subprocess.run(
        ["nft", "delete", "table", "netdev", table], capture_output=True, text=True
    )
    if proc.returncode == 0:
        done.append(f"deleted nftables table netdev {table}")
    return done
