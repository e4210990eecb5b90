"""For the pipeline tests: a private copy of the example spec with a fast policy, on
loopback addresses of its own, and a simulated site (real IPMI, hosts that really netboot).

Every site gets its own 127.N.x.y block so that these tests, `make demo` and other test runs on the
same machine never fight over 127.0.11.1:6230.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from helpers import run_cli

from provisioner.context import Context, Settings
from provisioner.lab.loopback import _free
from provisioner.releases.build import freeze, import_artifacts

# A lab netboot reports back within ~0.2 s even on a loaded 2-core machine. Tests that only need
# rollouts to succeed get generous timeouts (never waited for); tests that make a node boot-loop
# wait the full timeout, so they take LOOP_TIMEOUTS: still 20x what a healthy boot needs.
FAST_TIMEOUTS = {"power": 5, "boot": 10, "flash": 10, "callback": 5}
LOOP_TIMEOUTS = {"power": 1, "boot": 3, "flash": 2, "callback": 1}
SOAK_SECONDS = 1
FIRMWARE_CHANGES = ("activated", "inband_flash", "hand_flash")  # what the simulated BMC logs


def private_octet(port: int = 6230) -> int:
    """A second octet N such that nothing listens on 127.N.{11,12,19}.* yet."""
    rng = random.Random()
    for _ in range(50):
        n = rng.randint(60, 250)
        if all(_free(f"127.{n}.{rack}.{i}", port) for rack in (11, 12, 19) for i in (1, 8)):
            return n
    raise OSError("no free 127.N block for a private lab")


def tune_spec(spec: Path, *, rollout: dict | None = None, gate: dict | None = None,
              nodes: set[str] | None = None) -> Path:
    """Rewrite a spec copy: fast timeouts, private BMC addresses, optional policy overrides and a
    smaller inventory (only `nodes`)."""
    policy_file = spec / "policy.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    rollout = dict(rollout or {})
    policy["rollout"]["timeouts"].update(FAST_TIMEOUTS, **rollout.pop("timeouts", {}))
    policy["rollout"].update(rollout)
    policy["staging_gate"]["soak_seconds"] = SOAK_SECONDS
    policy["staging_gate"].update(gate or {})
    policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))

    inv_file = spec / "inventory.yaml"
    text = inv_file.read_text().replace("address: 127.0.", f"address: 127.{private_octet()}.")
    if nodes is not None:
        inv = yaml.safe_load(text)
        for rack in inv["racks"]:
            rack["nodes"] = [n for n in rack["nodes"] if n["name"] in nodes]
        inv["racks"] = [r for r in inv["racks"] if r["nodes"]]
        text = yaml.safe_dump(inv, sort_keys=False)
    inv_file.write_text(text)
    return spec


@dataclass
class Site:
    """One private site: spec, data dir, store and (when started) the simulated lab."""

    spec: Path
    data: Path
    ctx: Context
    lab: object = None
    db_url: str | None = None  # None: the embedded SQLite in the data dir

    def context(self, spec: Path | None = None, actor: str = "alice") -> Context:
        """Another view of the same data dir and store, e.g. with a new spec or acting as someone else."""
        return Context(Settings(spec_dir=spec or self.spec, data_dir=self.data, actor=actor, db_url=self.db_url))

    @property
    def env(self) -> dict[str, str]:
        """The environment a `provisioner` process of this site needs."""
        return {"PROVISIONER_SPEC": str(self.spec), "PROVISIONER_DATA": str(self.data),
                **({"PROVISIONER_DB": self.db_url} if self.db_url else {})}

    def build(self, spec: Path | None = None, author: str = "alice") -> str:
        """What `provisioner release build` does: freeze (refusing run-time blocks), store, return the id."""
        ctx = self.context(spec, author)
        blocked = [(b["model"], b["component"], b["version"]) for b in ctx.store.active_blocks()]
        rel = freeze(ctx.spec, blocked)
        import_artifacts(ctx.settings.spec_dir, rel, ctx.artifacts)
        existing = ctx.store.list_releases()
        parent = existing[-1]["id"] if existing else None
        ctx.store.add_release(rel, author, parent_id=parent if parent != rel.id else None)
        ctx.store.sync_nodes(ctx.spec)
        return rel.id

    def account(self, name: str, role: str = "approver", password: str = "correct horse battery"):
        """An account (created on first use) signed in with its password: an authenticated Actor."""
        from provisioner.auth.authenticate import with_password

        if self.ctx.store.accounts.get(name) is None:
            self.ctx.store.accounts.add(name, role, "test set-up", password=password)
        return with_password(self.ctx.store.accounts, name, password)

    def start_lab(self):
        from provisioner.lab.site import Lab

        self.lab = Lab(self.ctx).start()
        return self.lab

    def stop(self) -> None:
        if self.lab is not None:
            self.lab.stop()
            self.lab = None

    # -- what the simulated hardware says ---------------------------------------------------------------
    def firmware(self) -> dict[str, dict[str, str]]:
        return {n["name"]: n["firmware"] for n in self.lab.status()}

    def boots(self) -> dict[str, int]:
        return {n["name"]: n["boots"] for n in self.lab.status()}

    def bmc_log(self, node: str) -> list[dict]:
        return self.lab.site.state(node)["log"]

    def firmware_changes(self, node: str) -> list[dict]:
        return [e for e in self.bmc_log(node) if e["event"] in FIRMWARE_CHANGES]

    def cli(self, *args: str, who: str = "alice", spec: Path | None = None, timeout: float = 120,
            env: dict | None = None):
        """`provisioner ARGS` on the server host, run by the OS login `who` (direct store access records
        it beside `root@HOST (local store)`; it authenticates nobody)."""
        env = {**({"PROVISIONER_DB": self.db_url} if self.db_url else {}), "LOGNAME": who, "USER": who, **(env or {})}
        return run_cli(*args, spec=spec or self.spec, data=self.data, timeout=timeout, env=env)


def read_json(stdout: str):
    try:
        return json.loads(stdout)
    except ValueError:
        sys.stderr.write(stdout)
        raise
