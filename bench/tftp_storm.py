#!/usr/bin/env python3
"""Boot storm: N curl processes at once, each fetching a 1 MiB bootloader and its per-MAC
config over TFTP (blksize 1468), against our server and Debian's tftpd-hpa in the same run.

Three ways of starting the clients (`--methods release,spawn,plain`):
  release  the N clients are forked first, each a shell blocked on a pipe; closing the pipe
           lets them all exec curl at once. The clock starts at the release: forking N
           processes is left out, curl's own start-up (exec, libraries) is in.
  spawn    the clock starts, then this script forks and execs the N curl processes one after
           the other, as `for i in ...; do curl ... & done; wait` would. Process creation is in
           the measurement and competes with the server for the CPUs while early clients are
           already transferring: on 2 cores that is what a single-process Python server feels
           most (tftpd-hpa forks one process per transfer, which the scheduler spreads out).
  plain    as spawn, but each client is `curl -s tftp://.../bootx64.efi` with curl's defaults, as
           the independent measurement ran it: curl then asks for blksize 512, so 2,049 packets
           per MiB instead of 715, and the per-packet cost of each server decides.

In every round both servers run, the order swapped from one round to the next; the table gives
the median of the rounds and every round's ratio.

Our server renders the per-MAC configs with a resolver; tftpd-hpa serves the same bytes from
pre-generated files. Clients are curl processes for both servers (one process per client,
fetching the two files in turn); all N are spawned first and released at once. A client fails
if curl exits non-zero or a SHA-256 differs. Wall time runs from the release to the last exit.
Each server runs in its own process (ours: one per CPU, as `python -m provisioner.netboot.tftp`
runs). "server CPU-s" is the user+system time of the server's whole process tree during the
storm: ours from /proc, tftpd-hpa's from `perf stat` around it (its per-transfer children are
gone before /proc can be read; `--no-hpa-cpu` leaves perf out). "clients' CPU-s" is the curls'
(and in 'release' their shells'). "machine CPU-s" is the busy time of all CPUs during the storm
(from /proc/stat, so other jobs on the host too): when it is twice the wall time, the 2 cores
were saturated and wall time is total CPU work divided by 2.

    sudo .venv/bin/python bench/tftp_storm.py [--sizes 50,200,1000] [--repeat 3]

"server start-up" runs from starting the server process to its first answer (to an RRQ for a
file that does not exist); the last column adds it to both walls, for a measurement that starts
the servers inside the timed window too.

Needs root (tftpd-hpa drops to the `tftp` user) and the Debian packages curl and tftpd-hpa.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procstat import cpu_model, tree_cpu_seconds  # bench/, the script's own folder
from tftp_storm_server import config_for

BLKSIZE = 1468
BOOTLOADER = "bootx64.efi"
CLIENT_MAX_TIME = 90  # seconds; a client slower than this on loopback counts as failed (bounds the runtime)


def mac(i: int) -> str:
    return "52-54-00-" + "-".join(f"{b:02x}" for b in i.to_bytes(3, "big"))


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until the server answers an RRQ (for a file that does not exist): it is up and serving."""
    probe = b"\x00\x01startup-probe\x00octet\x00"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.005)
        while time.monotonic() < deadline and proc.poll() is None:
            s.sendto(probe, ("127.0.0.1", port))
            try:
                s.recvfrom(1024)
                return
            except (TimeoutError, ConnectionRefusedError):
                continue
    raise SystemExit("the server did not start")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, kind: str, root: Path, work: Path, count_hpa: bool = True):
        kind, *shape = kind.split(":")  # ours:PROCESSES:LOOPS, to compare shapes of our server
        self.kind, self.port = kind, free_port()
        started = time.monotonic()
        if kind == "ours":
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tftp_storm_server.py")),
                                          str(root), str(self.port), *shape])
        else:
            # tftpd-hpa's children are neither reaped nor alive when we look: `perf stat` counts
            # the CPU time of the whole tree (its start-up is a few milliseconds).
            hpa = ["in.tftpd", "-L", "-a", f"127.0.0.1:{self.port}", "-u", "tftp", "-s", str(root)]
            self.perf_out = work / f"perf-{self.port}.csv"
            self.under_perf = count_hpa and shutil.which("perf") is not None
            if self.under_perf:
                hpa = ["perf", "stat", "-x,", "-e", "task-clock", "-o", str(self.perf_out), *hpa]
            self.proc = subprocess.Popen(hpa)
        wait_ready(self.port, self.proc)
        self.startup = time.monotonic() - started  # process start until the first answer
        self.total_cpu = float("nan")

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid) if self.kind == "ours" else float("nan")

    def stop(self) -> None:
        target = self.proc.pid
        if self.kind == "hpa" and self.under_perf:  # stop in.tftpd itself; perf then writes its count
            children = Path(f"/proc/{target}/task/{target}/children")
            target = int((children.read_text().split() or [target])[0]) if children.exists() else target
        os.kill(target, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.kind == "hpa" and self.under_perf and self.perf_out.exists():
            for line in self.perf_out.read_text().splitlines():
                if line.endswith("task-clock,") or ",task-clock," in line:
                    self.total_cpu = float(line.split(",")[0]) / 1000


def curl_args(url: str, out: Path, i: int) -> list[str]:
    return ["curl", "-sS", "--max-time", "120", "--tftp-blksize", str(BLKSIZE),
            "-o", str(out / f"{i}.efi"), f"{url}/{BOOTLOADER}",
            "-o", str(out / f"{i}.cfg"), f"{url}/pxelinux.cfg/01-{mac(i)}"]


def plain_curl_args(url: str, out: Path, i: int) -> list[str]:
    """The independent measurement's client: `curl -s tftp://...` with curl's defaults (it asks
    for blksize 512, tsize and timeout), the 1 MiB file only."""
    return ["curl", "-s", "--max-time", "120", "-o", str(out / f"{i}.efi"), f"{url}/{BOOTLOADER}"]


def storm(server: Server, n: int, out: Path, expected_boot: str, method: str = "release"
          ) -> tuple[float, int, float, float, float]:
    """Run one storm; returns (wall s, failed clients, server CPU-s, machine CPU-s, clients' CPU-s).

    release: the N clients are spawned first, each a shell blocked reading an empty pipe; closing
    the pipe releases them all at once (EOF), and each then execs curl; the clock starts at the
    release. spawn: the clock starts, then the N curl processes are started one by one.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    url = f"tftp://127.0.0.1:{server.port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if method == "release":
        gate_r, gate_w = os.pipe()
        clients = [subprocess.Popen(["sh", "-c", 'read -r _; exec "$@"', "client", *curl_args(url, out, i)],
                                    stdin=gate_r, **quiet) for i in range(n)]
        os.close(gate_r)
        cpu_before, busy_before, clients_before = server.cpu(), machine_busy_seconds(), children_cpu()
        started = time.monotonic()
        os.close(gate_w)  # go
    else:
        args = plain_curl_args if method == "plain" else curl_args
        cpu_before, busy_before, clients_before = server.cpu(), machine_busy_seconds(), children_cpu()
        started = time.monotonic()
        clients = [subprocess.Popen(args(url, out, i), stdin=subprocess.DEVNULL, **quiet) for i in range(n)]
    codes = [c.wait() for c in clients]
    wall = time.monotonic() - started
    cpu, busy = server.cpu() - cpu_before, machine_busy_seconds() - busy_before
    clients_cpu = children_cpu() - clients_before
    failed = 0
    for i, code in enumerate(codes):
        try:
            ok = (code == 0
                  and hashlib.sha256((out / f"{i}.efi").read_bytes()).hexdigest() == expected_boot
                  and (method == "plain"
                       or (out / f"{i}.cfg").read_bytes() == config_for(f"pxelinux.cfg/01-{mac(i)}")))
        except OSError:
            ok = False
        failed += not ok
    shutil.rmtree(out, ignore_errors=True)
    return wall, failed, cpu, busy, clients_cpu


def children_cpu() -> float:
    """User + system CPU seconds of this script's reaped children: the clients (servers are
    reaped only after their storm)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine() -> str:
    model = cpu_model()
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
    return (f"load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {model}; Linux {platform.release()}; "
            f"Python {platform.python_version()}; curl {curl}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N up to 200 (median); N>200 runs once")
    parser.add_argument("--servers", default="ours,hpa",
                        help="which servers to run, e.g. ours; ours:P:L = P processes of L loops each")
    parser.add_argument("--methods", default="release,spawn", help="how clients start (see above)")
    parser.add_argument("--no-hpa-cpu", dest="hpa_cpu", action="store_false",
                        help="run tftpd-hpa without `perf stat` around it (no CPU figure for it; perf's "
                             "per-task counting costs its many processes a little)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if os.geteuid() != 0 or not shutil.which("in.tftpd") or not shutil.which("curl"):
        print("needs root, curl and tftpd-hpa (in.tftpd)", file=sys.stderr)
        return 2

    print(f"machine: {machine()}")
    root = Path(tempfile.mkdtemp(prefix="tftp-storm-", dir="/tmp"))
    hpa_root = Path(tempfile.mkdtemp(prefix="tftp-storm-hpa-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="tftp-storm-out-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        root.chmod(0o755)
        payload = os.urandom(1 << 20)
        (root / BOOTLOADER).write_bytes(payload)
        expected = hashlib.sha256(payload).hexdigest()
        # tftpd-hpa gets the per-MAC configs as files; ours renders them.
        hpa_root.chmod(0o755)
        (hpa_root / "pxelinux.cfg").mkdir(mode=0o755)
        shutil.copy(root / BOOTLOADER, hpa_root / BOOTLOADER)
        for i in range(max(sizes)):
            name = f"pxelinux.cfg/01-{mac(i)}"
            (hpa_root / name).write_bytes(config_for(name))
        for path in hpa_root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / BOOTLOADER).chmod(0o644)

        rows = []
        kinds = args.servers.split(",")
        for method in args.methods.split(","):
            for n in sizes:
                runs = {k: [] for k in kinds}
                for rnd in range(args.repeat if n <= 200 else 1):
                    # Both servers in every round, the order swapped each round: whoever runs
                    # second inherits the first one's leftovers (page cache, TIME_WAIT, load).
                    for kind in (kinds if rnd % 2 == 0 else kinds[::-1]):
                        server = Server(kind, root if kind.startswith("ours") else hpa_root, work,
                                        args.hpa_cpu)
                        load = os.getloadavg()[0]
                        try:
                            wall, failed, cpu, busy, clients_cpu = storm(server, n, work / "clients",
                                                                         expected, method)
                        finally:
                            server.stop()
                        if server.kind == "hpa":
                            cpu = server.total_cpu
                        runs[kind].append((wall, failed, cpu, busy, server.startup, clients_cpu))
                        print(f"{method:7s} N={n:5d} {kind:4s} wall={wall:6.2f}s failed={failed} "
                              f"server-cpu={cpu:5.2f}s clients-cpu={clients_cpu:5.2f}s machine-cpu={busy:5.2f}s "
                              f"start-up={server.startup:.3f}s load-average={load:.1f}..{os.getloadavg()[0]:.1f}",
                              flush=True)
                med = {k: (statistics.median(r[0] for r in v), sum(r[1] for r in v),
                           statistics.median(r[2] for r in v), statistics.median(r[3] for r in v), len(v),
                           [r[0] for r in v], statistics.median(r[4] for r in v),
                           statistics.median(r[5] for r in v))
                       for k, v in runs.items()}
                rows.append((method, n, med.get("ours"), med.get("hpa")))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(hpa_root, ignore_errors=True)

    print(f"\nBoot storm, blksize {BLKSIZE}: each client = curl fetching a 1 MiB {BOOTLOADER} + its per-MAC "
          f"pxelinux config\n")
    print("| clients start | N | runs | ours wall (s) | tftpd-hpa wall (s) | ours ÷ hpa (median; per run) "
          "| failures ours / hpa | server CPU-s ours / hpa | clients' CPU-s ours / hpa | machine CPU-s ours / hpa "
          "| server start-up (s) ours / hpa | ours ÷ hpa, start-up included |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method, n, ours, hpa in rows:
        if ours is None or hpa is None:
            continue
        per_run = ", ".join(f"{o / h:.2f}" for o, h in zip(ours[5], hpa[5], strict=True))
        print(f"| {method} | {n} | {ours[4]} | {ours[0]:.2f} | {hpa[0]:.2f} | {ours[0] / hpa[0]:.2f}; {per_run} "
              f"| {ours[1]} / {hpa[1]} | {ours[2]:.2f} / {hpa[2]:.2f} | {ours[7]:.2f} / {hpa[7]:.2f} "
              f"| {ours[3]:.2f} / {hpa[3]:.2f} "
              f"| {ours[6]:.3f} / {hpa[6]:.3f} | {(ours[0] + ours[6]) / (hpa[0] + hpa[6]):.2f} |")
    print(f"\nmachine: {machine()}")
    return 1 if any(r[2] and r[2][1] for r in rows) else 0  # our failures fail the run


if __name__ == "__main__":
    sys.exit(main())
