"""Loopback addresses for simulated racks: every 127.x.y.z binds on Linux without any setup."""

from __future__ import annotations

import ipaddress
import os
import random
import socket


def default_port() -> int:
    """623 (the IPMI port) when we may bind it, else an unprivileged stand-in."""
    return 623 if os.geteuid() == 0 else 6230


def free_block(count: int, port: int | None = None, *, rng: random.Random | None = None,
               attempts: int = 20) -> tuple[str, int]:
    """(first address, port) of `count` consecutive free UDP addresses in a random 127.x.y.0 range.

    Random so that two test runs on one machine rarely meet; checked by binding the first and last
    address, so a collision is unlikely rather than impossible.
    """
    port = default_port() if port is None else port
    rng = rng or random.Random()
    for _ in range(attempts):
        first = ipaddress.IPv4Address(f"127.{rng.randint(100, 250)}.{rng.randint(0, 200)}.1")
        last = first + (count - 1)
        if not last.is_loopback:
            continue
        if all(_free(str(a), port) for a in (first, last)):
            return str(first), port
    raise OSError(f"no free block of {count} loopback addresses on port {port} after {attempts} tries")


def _free(address: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
