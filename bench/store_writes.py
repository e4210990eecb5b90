"""Benchmark: CPU of the store writes one rollback node costs, without BMCs or boots.

    python bench/store_writes.py [--nodes 300] [--tree DIR]

Engine side: the writes the rollout engine makes for one r650 node of the 1,000-node rollback
(prepare, in-band BIOS flash, boot check, verify: step records before and after, the node's
states, the boots it expects, fenced by the environment's lease). Boot-server side: one callback
report ("flashed") that closes its boot and moves the node. Both on a fresh SQLite store, so the
figures compare trees (`--tree` another worktree, e.g. an older commit) on a machine too loaded
for the 1,000-node pipeline's wall time to mean much.
"""

from __future__ import annotations

import argparse
import inspect
import resource
import sys
import tempfile
import time
from pathlib import Path


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=300)
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args()
    sys.path.insert(0, str(args.tree))
    from sqlalchemy import text

    from provisioner.rollout.lease import Leases, bmc_key, environment_key, node_key
    from provisioner.rollout.record import RolloutRecord
    from provisioner.store.db import Database
    from provisioner.store.repo import Store, now

    n = args.nodes
    db = Database(f"sqlite:///{tempfile.mkdtemp(prefix='provisioner-bench-')}/p.db", upgrade=True)
    store = Store(db)
    with db.write() as c:
        c.execute(text("INSERT INTO rollouts (environment, release_id, kind, status, reason, by, created_at) "
                       "VALUES ('production', 'R', 'rollback', 'running', '', 'bench', '2026-01-01')"))
        for i in range(n):
            c.execute(text("INSERT INTO rollout_nodes (rollout_id, node, position, wave, rack, action, plan, status, "
                           "step, error) VALUES (1, :n, :i, 1, 'r', 'reflash', '{}', 'pending', '', '')"),
                      {"n": f"n{i}", "i": i})
            c.execute(text("INSERT INTO nodes (name, rack, model, environment, macs, state, state_reason, observed, "
                           "updated_at) VALUES (:n, 'r', 'r650', 'production', '[]', 'active', '', '{}', '2026-01-01')"),
                      {"n": f"n{i}"})
    leases = Leases(store)
    with db.write() as c:
        leases.take(c, environment_key("production"), "bench")
    leases.start_heartbeat()
    record = RolloutRecord(store, leases, "production")
    merged = "expect_boot" in inspect.signature(record.node_write).parameters  # this branch's single writes
    store.boots.token("warm-up")  # the token key exists before any boot is opened

    def boot(node: str, state: str, action: str) -> None:
        if merged:
            record.node_write(node, state=(state, "rollout"), expect_boot=(action, "R"))
        else:
            record.node_write(node, state=(state, "rollout"))
            store.boots.expect(node, action, "R")
        store.boots.end(node)

    t0, c0 = time.perf_counter(), cpu_s()
    for i in range(n):
        node, keys = f"n{i}", (node_key(f"n{i}"), bmc_key("127.0.0.1", 1024 + i))
        record.transition(1, node, begin="prepare", status="running", started_at=now(), take=keys)
        record.node_write(node, observed={"bmc": "1", "bios": "1.14.0"}, observed_at=now())
        record.transition(1, node, ended=("prepare", "end", {"firmware": {"bios": "1.14.0"}}, now()), begin="oob_flash")
        record.transition(1, node, ended=("oob_flash", "skip", {"skipped": True}, now()), begin="inband_flash")
        boot(node, "flash", "flash")
        with db.write() as c:  # the flasher's report (the boot server's side, measured below)
            c.execute(text("UPDATE nodes SET state = 'flashed' WHERE name = :n"), {"n": node})
        record.node_write(node, observed={"bmc": "1", "bios": "1.13.2"}, observed_at=now())
        record.transition(1, node, ended=("inband_flash", "end", {"callback": "flashed"}, now()), begin="boot_check")
        boot(node, "boot_check", "local")
        record.transition(1, node, ended=("boot_check", "end", {"callback": "booted"}, now()), begin="verify")
        verified, event = ("verified", "verified at release R", {"healthy_since": now()}), ("rollout", "verified", {})
        done = {"ended": ("verify", "end", {"verified": True}, now()), "status": "done", "finished_at": now(),
                "step": "", "release": keys}
        if merged:
            record.transition(1, node, node_state=verified, node_event=event, **done)
        else:
            record.node_write(node, state=verified[:2], healthy_since=now(), event=event)
            record.transition(1, node, **done)
    engine_cpu, engine_wall = (cpu_s() - c0) / n, (time.perf_counter() - t0) / n
    leases.stop()

    tokens = []
    for i in range(n):
        store.boots.expect(f"n{i}", "flash", "R")
        with db.read() as c:
            boot_id = c.execute(text("SELECT boot_id FROM boot_tokens WHERE node = :n AND closed_at IS NULL"),
                                {"n": f"n{i}"}).scalar()
        tokens.append(store.boots.token(boot_id))
    with db.write() as c:
        c.execute(text("UPDATE nodes SET state = 'flashing'"))

    def flashed(row, _boot) -> None:
        row.state, row.state_reason = "flashed", "flasher reported; the BMC is read next"

    t0, c0 = time.perf_counter(), cpu_s()
    for i in range(n):
        store.boots.report(f"n{i}", tokens[i], lambda _b: None, "flashed",
                           {"source": "callback", "event": "flashed", "details": {"boot_action": "flash"}},
                           node_update=flashed)
    report_cpu, report_wall = (cpu_s() - c0) / n, (time.perf_counter() - t0) / n
    print(f"{args.tree}: engine writes per node {engine_cpu * 1e3:.2f} ms CPU ({engine_wall * 1e3:.1f} ms wall, "
          f"{'merged' if merged else 'separate'}); one callback report {report_cpu * 1e3:.2f} ms CPU "
          f"({report_wall * 1e3:.1f} ms wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
