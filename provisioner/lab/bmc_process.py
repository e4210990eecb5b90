"""Run a SimSite in its own process, and drive it from another one.

    python -m provisioner.lab.bmc --nodes nodes.json --state bmc-state.json
    python -m provisioner.lab.bmc --generate 1000 --base 127.42.0.1 --state bmc-state.json
    python -m provisioner.lab.bmc --generate 1000 --port 8443 --redfish DIR --state DIR/state.json

Protocol on the child's stdin/stdout, one JSON object per line:
  - child -> parent, once every BMC answers:   {"event": "ready", "bmcs": N, "pid": P}
  - child -> parent, when a host starts booting: {"event": "power_on", "node": ..., "boot_device": ...}
  - parent -> child: {"id": 7, "op": "set_fault", "args": {"node": "r1n01", "loss": 0.1}}
    child -> parent: {"id": 7, "ok": true, "result": ...} or {"id": 7, "ok": false, "error": "..."}
    ops: state, states, firmware, set_firmware, hand_flash, set_power, set_fault, clear_faults,
    flush, stop. End of input also stops the site.
The site is up when the "ready" line has arrived; SiteProcess.start() waits for it.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OPS = ("state", "states", "firmware", "set_firmware", "hand_flash", "set_power", "set_fault",
       "clear_faults", "lose_power", "flush")


def generate_nodes(count: int, *, base: str = "127.42.0.1", port: int = 623, username: str = "admin",
                   password: str = "password", firmware: dict[str, str] | None = None,
                   prefix: str = "sim") -> list[dict]:
    """`count` nodes on consecutive loopback addresses from `base`, all on `port`."""
    start = ipaddress.IPv4Address(base)
    fw = firmware or {"bmc": "2.1.0", "bios": "1.20.0", "nic": "22.31.6", "raid": "52.26.0"}
    nodes = []
    for i in range(count):
        addr = start + i
        if not addr.is_loopback:
            raise ValueError(f"{addr} is not a loopback address; the lab only uses 127.0.0.0/8")
        nodes.append({"name": f"{prefix}{i:04d}", "bmc_address": str(addr), "bmc_port": port,
                      "username": username, "password": password, "firmware": dict(fw)})
    return nodes


class SiteProcess:
    """A SimSite in a child process, with the same outside hooks as SimSite (over stdin/stdout).

    on_power_on(node, boot_device) runs on a small pool in this process, like SimSite's hook.
    The node list is written next to the state file (mode 0600: it holds the BMC passwords).
    """

    def __init__(self, nodes: list[dict], *, state_path: str | os.PathLike,
                 on_power_on: Callable[[str, str], None] | None = None, activation_s: float = 0.1,
                 extra_args: tuple[str, ...] = ()):
        self.nodes = nodes
        self.state_path = Path(state_path)
        self.on_power_on = on_power_on
        self.activation_s = activation_s
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._ready: dict | None = None
        self._write_lock = threading.Lock()

    def start(self, timeout: float = 60.0) -> SiteProcess:
        nodes_file = self.state_path.with_name(self.state_path.name + ".nodes.json")
        fd = os.open(nodes_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds BMC passwords
        with os.fdopen(fd, "w") as f:
            json.dump(self.nodes, f)
        self._hooks = ThreadPoolExecutor(4, thread_name_prefix="sim-hook")
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "provisioner.lab.bmc", "--nodes", str(nodes_file),
             "--state", str(self.state_path), "--activation-s", str(self.activation_s), *self.extra_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)
        threading.Thread(target=self._read, name="sim-site-reader", daemon=True).start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready is not None or self.proc.poll() is not None,
                                       timeout):
                self.stop()
                raise TimeoutError(f"simulated site did not come up within {timeout}s")
        if self._ready is None:
            raise RuntimeError(f"simulated site exited with {self.proc.returncode}: {self.stderr()[-2000:]}")
        return self

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def call(self, op: str, timeout: float = 30.0, **args):
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("simulated site is not running")
        rid = next(self._ids)
        with self._write_lock:
            self.proc.stdin.write(json.dumps({"id": rid, "op": op, "args": args}) + "\n")
            self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._replies or self.proc.poll() is not None, timeout):
                raise TimeoutError(f"simulated site did not answer {op!r} within {timeout}s")
            reply = self._replies.pop(rid, None)
        if reply is None:
            raise RuntimeError(f"simulated site died: {self.stderr()[-2000:]}")
        if not reply["ok"]:
            raise RuntimeError(f"simulated site refused {op}: {reply['error']}")
        return reply.get("result")

    # The same outside hooks as SimSite, forwarded to the child.
    def state(self, node: str) -> dict:
        return self.call("state", node=node)

    def states(self) -> dict[str, dict]:
        return self.call("states")

    def firmware(self, node: str) -> dict[str, str]:
        return self.call("firmware", node=node)

    def set_firmware(self, node: str, component: str, version: str) -> None:
        self.call("set_firmware", node=node, component=component, version=version)

    def hand_flash(self, node: str, component: str, version: str) -> None:
        self.call("hand_flash", node=node, component=component, version=version)

    def set_power(self, node: str, power: str) -> None:
        self.call("set_power", node=node, power=power)

    def set_fault(self, node: str, **faults) -> None:
        self.call("set_fault", node=node, **faults)

    def clear_faults(self, node: str | None = None) -> None:
        self.call("clear_faults", node=node)

    def lose_power(self, node: str) -> None:
        self.call("lose_power", node=node)

    def flush(self) -> None:
        self.call("flush")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.stdin.close()
            self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._hooks.shutdown(wait=True)

    def __enter__(self) -> SiteProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run_hook(self, node: str, device: str) -> None:
        try:
            self.on_power_on(node, device)
        except Exception:
            logging.getLogger(__name__).exception("sim.hook.error node=%s hook=on_power_on", node)

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "ready":
                with self._cond:
                    self._ready = msg
                    self._cond.notify_all()
            elif msg.get("event") == "power_on":
                if self.on_power_on is not None:
                    self._hooks.submit(self._run_hook, msg["node"], msg["boot_device"])
            elif "id" in msg:
                with self._cond:
                    self._replies[msg["id"]] = msg
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()


def main(argv: list[str] | None = None) -> int:
    from provisioner.lab.bmc import SimSite

    p = argparse.ArgumentParser(prog="python -m provisioner.lab.bmc",
                                description="Run simulated BMCs (IPMI 2.0 on loopback) until stdin closes.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--nodes", help="JSON file: a list of {name, bmc_address, bmc_port, username, "
                                     "password, firmware}")
    src.add_argument("--generate", type=int, metavar="N", help="make N nodes on consecutive addresses")
    p.add_argument("--base", default="127.42.0.1", help="first address for --generate")
    p.add_argument("--port", type=int, default=623, help="port for --generate")
    p.add_argument("--state", required=True, help="JSON state file (created if missing)")
    p.add_argument("--activation-s", type=float, default=0.1, help="HPM.1 activation time")
    p.add_argument("--redfish", metavar="CERT_DIR", default=None,
                   help="serve Redfish over HTTPS instead of IPMI, with the lab CA kept in CERT_DIR")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    nodes = json.loads(Path(args.nodes).read_text()) if args.nodes else generate_nodes(
        args.generate, base=args.base, port=args.port)
    out_lock = threading.Lock()

    def emit(msg: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(msg) + "\n")
            sys.stdout.flush()

    def on_power_on(node, dev):
        emit({"event": "power_on", "node": node, "boot_device": dev})

    if args.redfish:
        from provisioner.lab.redfish_site import RedfishSite

        site = RedfishSite(nodes, state_path=args.state, cert_dir=args.redfish, activation_s=args.activation_s,
                           on_power_on=on_power_on)
    else:
        site = SimSite(nodes, state_path=args.state, activation_s=args.activation_s, on_power_on=on_power_on)
    try:
        site.start(timeout=60)
    except (OSError, TimeoutError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    emit({"event": "ready", "bmcs": len(site.bmcs), "pid": os.getpid()})
    try:
        for line in sys.stdin:
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if req.get("op") == "stop":
                emit({"id": req.get("id"), "ok": True, "result": None})
                break
            try:
                if req.get("op") not in OPS:
                    raise ValueError(f"unknown op {req.get('op')!r}")
                result = getattr(site, req["op"])(**req.get("args", {}))
                emit({"id": req.get("id"), "ok": True, "result": result})
            except Exception as e:  # reported to the parent, which raises it there
                emit({"id": req.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}"})
    except (ValueError, OSError):
        pass  # stdin closed by SIGTERM
    finally:
        site.stop()
    return 0
