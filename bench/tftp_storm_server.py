"""Our TFTP server as `bench/tftp_storm.py` runs it: its own process, the per-MAC configs rendered by a
resolver. Kept apart from the bench so the server's start-up pays only for its own imports.

    python bench/tftp_storm_server.py ROOT PORT [PROCESSES [LOOPS]]

PROCESSES defaults to one per CPU and LOOPS to 1, as `python -m provisioner.netboot.tftp` does.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path


def config_for(name: str) -> bytes | None:
    m = re.fullmatch(r"pxelinux\.cfg/01-((?:[0-9a-f]{2}-){5}[0-9a-f]{2})", name)
    if not m:
        return None
    return (f"DEFAULT install\nLABEL install\n  KERNEL http://10.0.0.1/images/vmlinuz\n"
            f"  APPEND initrd=http://10.0.0.1/images/initrd.img BOOTIF=01-{m.group(1)} "
            f"url=http://10.0.0.1/api/boot/{m.group(1)}\n").encode()


def main(root: str, port: str, processes: str = "", loops: str = "1") -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from provisioner.netboot.tftp import TftpServer

    server = TftpServer(root, lambda name, client: config_for(name), "127.0.0.1", int(port),
                        processes=int(processes or os.cpu_count() or 1), loops=int(loops))
    server.bind()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    server.serve_forever()


if __name__ == "__main__":
    main(*sys.argv[1:5])
