"""`make demo-inband`: the seed incident in its in-band form, and its recovery through the BMC.

The r650's BIOS is flashed in band (the node netboots a flasher), and BIOS 1.14.0 makes it
boot-loop. A release pinning it is applied to staging: the canary takes the flash, never comes
back, and the rollout halts. A looping server never netboots again, so `rollback staging` cannot
reach it in band: the manifest names a recovery path (`recovery: hpm`), and the rollback flashes
the canary's BIOS back through its BMC over PICMG HPM.1, then boot-checks and verifies it.

Same site and commands as `make demo`; everything stays in .provisioner-demo-inband/.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from provisioner.cli.output import console, table
from provisioner.context import Context, Settings
from provisioner.demo import REPO, bump_bios, release_id, run, say, timeline
from provisioner.operations import nodes

MODEL, COMPONENT, BAD = "r650", "bios", "1.14.0"


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    data = REPO / ".provisioner-demo-inband"
    if data.exists():
        shutil.rmtree(data)
    spec = REPO
    ctx = Context(Settings(spec_dir=spec, data_dir=data, actor="alice"))

    say("1. The spec, frozen into release R1; a simulated site")
    pin = next(c for c in ctx.spec.manifests[MODEL].components if c.name == COMPONENT)
    console.print(f"{MODEL} {COMPONENT} {pin.version}: method {pin.method} (the node netboots a flasher), "
                  f"recovery {pin.recovery} (through the BMC when it cannot netboot)")
    run("release", "build", spec=spec, data=data)
    r1 = release_id(data, spec)
    from provisioner.lab.site import Lab

    try:
        lab = Lab(ctx).start()
    except OSError as e:
        console.print(f"[red]error: the simulated site cannot start: {e}[/red]\n"
                      "Is another lab using the example's BMC addresses? Stop it with `provisioner lab down`.")
        return 1
    try:
        return _story(ctx, lab, spec, data, r1)
    finally:
        lab.stop()


def _story(ctx: Context, lab, spec: Path, data: Path, r1: str) -> int:
    run("promote", r1[:12], "--to", "staging", spec=spec, data=data)
    run("apply", "staging", spec=spec, data=data)

    say(f"2. R2 pins {MODEL} {COMPONENT} {BAD}, flashed in band; on this hardware it boot-loops")
    lab.set_boot_loop(COMPONENT, BAD)  # what `provisioner lab fault --boot-loop bios=1.14.0` does
    spec2 = data / "spec-v2"
    bump_bios(spec, spec2, model=MODEL, version=BAD, component=COMPONENT)
    run("release", "build", spec=spec2, data=data)
    r2 = release_id(data, spec2)
    run("release", "diff", r1[:12], r2[:12], spec=spec2, data=data)
    run("promote", r2[:12], "--to", "staging", spec=spec2, data=data)
    run("apply", "staging", spec=spec2, data=data, ok=(8,))  # the canary never comes back: halt
    canary = next(n.name for n in ctx.store.nodes("staging") if n.state == "failed")
    console.print(f"{canary} runs {COMPONENT} {lab.site.firmware(canary)[COMPONENT]} and loops: "
                  "it will never netboot a flasher again")

    say("3. Roll staging back: the looping canary is reflashed through its BMC (HPM.1)")
    seen = len(lab.site.state(canary)["log"])
    run("rollback", "staging", spec=spec, data=data)
    table(f"{canary}'s BMC log during the rollback", ["event", "details"],
          [[e["event"], ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("at", "event"))]
           for e in lab.site.state(canary)["log"][seen:]])

    say("4. Every staging node at its pinned versions")
    run("status", "staging", spec=spec, data=data)
    rows = nodes.compliance(ctx, ["staging"])
    compliant = sum(bool(r["compliant"]) for r in rows)
    run("audit", "verify", spec=spec, data=data)

    say("Timeline")
    for at, what in timeline:
        console.print(f"  {at:6.1f}s  {what}")
    console.print(f"\n{compliant}/{len(rows)} staging nodes compliant; "
                  f"[bold]provisioner --data {data.relative_to(REPO)} history[/bold] shows every step")
    return 0 if compliant == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
