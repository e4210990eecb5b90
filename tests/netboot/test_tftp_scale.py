"""A boot storm in one process: 1,000 transfers at once, all intact."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from provisioner.netboot.tftp import TftpServer
from provisioner.netboot.tftp_client import fetch_many


@pytest.mark.parametrize("loops", [1, 3])
def test_a_thousand_concurrent_transfers_all_complete_intact(tmp_path, loops):
    payload = os.urandom(20_000)
    (tmp_path / "undionly.kpxe").write_bytes(payload)

    def per_mac(name, client):
        return f"#!ipxe\n# {name}\n".encode() if name.startswith("boot-") else None

    names = [f"boot-{i:012x}.ipxe" if i % 4 == 0 else "undionly.kpxe" for i in range(1000)]
    with TftpServer(tmp_path, per_mac, port=0, loops=loops) as server:
        started = time.monotonic()
        # All 1,000 RRQs leave before the first reply is read: the burst the receive buffer absorbs.
        results = fetch_many("127.0.0.1", server.port, names, blksize=1468, tsize=True, timeout=1.0)
        elapsed = time.monotonic() - started
        failed = [r for r in results if r.data is None]
        assert not failed, f"{len(failed)} failed, first: {failed[0].error}"
        for name, result in zip(names, results, strict=True):
            expected = payload if name == "undionly.kpxe" else f"#!ipxe\n# {name}\n".encode()
            assert hashlib.sha256(result.data).digest() == hashlib.sha256(expected).digest()
        deadline = time.monotonic() + 2
        while server.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.active == 0
        if loops > 1:  # SO_REUSEPORT spread the clients over every loop
            assert all(loop.served > 0 for loop in server._loops)
    assert elapsed < 20
