"""Prints each running mariadbd (or mysqld) and the TCP addresses it listens on,
one a line: ``pid 812 listens on 127.0.0.1:3307``. Nothing when none runs.

scripts/setup.sh asks this when nothing answers on DATABASE_URL's port, to say at
once that a server runs elsewhere rather than start one and wait. It reads /proc
alone (no ss or pgrep, which slim images lack); the sockets of another user's
process are visible to root only, and the line says so.
"""

import ipaddress
import os
import sys
from pathlib import Path

SERVERS = {"mariadbd", "mysqld"}
LISTEN = "0A"


def _address(hex_address: str) -> str:
    """/proc/net/tcp's ``0100007F:0CEA``: the address in host order by 32-bit words."""
    host, port = hex_address.split(":")
    raw = b"".join(
        int(host[i : i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(host), 8)
    )
    address = ipaddress.ip_address(raw)
    shown = f"[{address}]" if address.version == 6 else str(address)
    return f"{shown}:{int(port, 16)}"


def listening(pid: str) -> list[str]:
    """The addresses process ``pid`` listens on; PermissionError for another user's."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    addresses = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in sockets:
                addresses.append(_address(fields[1]))
    return addresses


def main() -> None:
    for pid in sorted((entry for entry in os.listdir("/proc") if entry.isdigit()), key=int):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() not in SERVERS:
                continue
            addresses = listening(pid)
        except PermissionError:
            print(f"pid {pid} (whose sockets this user cannot see)")
            continue
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited meanwhile
        found = " ".join(addresses) or "no TCP port (still starting, or skip-networking)"
        print(f"pid {pid} listens on {found}")


if __name__ == "__main__":
    main()
