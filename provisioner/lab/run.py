"""The lab as a background process (`provisioner lab up`), with a control socket.

    python -m provisioner.lab.run --spec DIR --data DIR [--tftp-bind H:P] [--http-bind H:P]

Writes DATA/lab/lab.json ({"pid", "tftp", "http", "socket"}) once every BMC answers, and serves
one-line JSON requests on DATA/lab/control.sock: status, set_fault, clear_faults, hand_flash,
boot_loop, journal, stop. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import socketserver
import threading
from pathlib import Path

from provisioner.context import Context, Settings


def control_call(data_dir: Path, op: str, timeout: float = 30.0, **args):
    """Ask a running lab; raises ConnectionError if none runs."""
    path = Path(data_dir) / "lab" / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ConnectionError(f"no lab is running under {data_dir} ({e.__class__.__name__})") from None
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ValueError(reply.get("error", "lab refused"))
    return reply.get("result")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m provisioner.lab.run")
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--db", default=None)
    ap.add_argument("--tftp-bind", default="127.0.0.1:0")
    ap.add_argument("--http-bind", default="127.0.0.1:0")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    from provisioner.lab.site import Lab

    ctx = Context(Settings(spec_dir=args.spec, data_dir=args.data, db_url=args.db, actor="lab"))
    lab = Lab(ctx, tftp_bind=args.tftp_bind, http_bind=args.http_bind).start()
    stop = threading.Event()
    sock_path = lab.dir / "control.sock"
    sock_path.unlink(missing_ok=True)

    ops = {
        "status": lambda: lab.status(),
        "set_fault": lambda node, **f: lab.site.set_fault(node, **f),
        "clear_faults": lambda node=None: lab.site.clear_faults(node),
        "hand_flash": lambda node, component, version: lab.site.hand_flash(node, component, version),
        "boot_loop": lambda component, version, on=True: lab.set_boot_loop(component, version, on),
        "journal": lambda node=None, limit=200: [j for j in lab.host.journal if node in (None, j["node"])][-limit:],
        "stop": lambda: stop.set(),
    }

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            try:
                req = json.loads(self.rfile.readline())
                result = ops[req["op"]](**req.get("args", {}))
                reply = {"ok": True, "result": result}
            except Exception as e:  # a bad request must not take the lab down
                reply = {"ok": False, "error": f"{e.__class__.__name__}: {e}"}
            self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")

    server = socketserver.ThreadingUnixStreamServer(str(sock_path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    info = {"pid": os.getpid(), "tftp": list(lab._tftp), "http": lab._http_base, "socket": str(sock_path),
            "nodes": len(lab.nodes)}
    tmp = lab.dir / "lab.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(lab.dir / "lab.json")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()
    lab.stop()
    (lab.dir / "lab.json").unlink(missing_ok=True)
    sock_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
