"""Recovery of a node that cannot netboot: flash it through its BMC, or say exactly what hands must do.

A node presumed boot-looping (a rollout gave up on it: no report after power-on, e.g. after an
in-band BIOS flash it never came back from) never reaches the flasher again, so an in-band flash
cannot repair it. When such a node runs firmware that must change:

  - every in-band component whose manifest names a recovery path (`recovery: hpm`: PICMG HPM.1
    through the BMC; Redfish when that driver lands) is flashed out of band with the host powered
    off, and the driver verifies it by a fresh inventory read; the rollout then boot-checks the
    node and verifies it as usual (its in-band step finds nothing left to do);
  - if any such component has no path the BMC can take, the node goes to `needs-hands` with the
    instruction (which component, which image file and sha256, which BMC) and the rollout fails
    it with that text.

The engine calls `recover_out_of_band` at the start of its out-of-band step; nothing else here
knows the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import and_, or_, select

from provisioner.drivers.base import BmcDriver
from provisioner.spec.models import FirmwareComponent
from provisioner.states import NodeState
from provisioner.store.models import NodeEventRow, NodeRow

log = logging.getLogger("provisioner.rollout.recovery")

LOOPING = "presumed boot-looping"   # what the engine says of a node that never reported after power-on
NEEDS_HANDS = NodeState.NEEDS_HANDS
_NODES, _EVENTS = NodeRow.__table__, NodeEventRow.__table__


class NeedsHands(Exception):
    """The node cannot netboot and its BMC cannot flash what must change: a person has to."""

    node_event = "needs_hands"  # the lifecycle edge (provisioner/states.py) the engine moves the node along


def presumed_boot_looping(store, node: str) -> str | None:
    """Why `node` is presumed unable to netboot, from its record; None when nothing says so.

    Its state says so first. Otherwise (a `block` may have re-marked it held since) its events,
    newest first: a rollout that gave up on it after power-on says so; a rollout that verified it,
    or any sign it netbooted since (a boot-service decision, a callback), says it can.
    """
    with store.db.read() as c:  # a read: no write turn taken (every rollout asks this of every node)
        state, reason = c.execute(select(_NODES.c.state, _NODES.c.state_reason).where(_NODES.c.name == node)).first() \
            or (None, None)
        if state in ("failed", NEEDS_HANDS) and LOOPING in (reason or ""):
            return reason
        # the newest event that tells either way, by index, instead of the node's whole history
        e = c.execute(select(_EVENTS.c.source, _EVENTS.c.event, _EVENTS.c.details)
                      .where(_EVENTS.c.node == node, or_(_EVENTS.c.source.in_(("netboot", "callback")), and_(
                          _EVENTS.c.source == "rollout", _EVENTS.c.event.in_(("verified", "failed")))))
                      .order_by(_EVENTS.c.seq.desc()).limit(1)).first()
    if e is None or (e.source, e.event) != ("rollout", "failed"):
        return None
    error = (e.details or {}).get("error", "")
    return error if LOOPING in error else None


def recover_out_of_band(store, artifacts, driver: BmcDriver, node: str, model: str,
                        differing: list[FirmwareComponent], bmc: str,
                        announce: Callable[[str, dict], None]) -> list[str]:
    """Flash a node that cannot netboot through its BMC; [] when it can netboot or nothing in-band differs.

    `differing`: the release's components (its view's pins) not at their pin. `announce(event,
    details)` records the node event before the BMC is touched, as the rollout's fenced write of
    the node: a holder that lost the node's lease raises there (LeaseLost) and flashes nothing.
    Raises NeedsHands when a component has no recovery path the BMC can take; DriverError from
    the flash itself.
    """
    inband = [c for c in differing if c.method == "inband"]
    if not inband:
        return []
    why = presumed_boot_looping(store, node)
    if why is None:
        return []
    stuck = [c for c in inband if not c.recovery or not driver.supports_oob_flash(c.name)]
    if stuck:
        raise _needs_hands(store, node, model, stuck, bmc, why, driver)
    flashed = []
    for i, c in enumerate(inband):
        sha = c.image.sha256
        image = artifacts.read(sha)  # verified against its digest on read
        log.warning("recovery.flash node=%s component=%s version=%s path=%s bmc=%s", node, c.name,
                    c.version, c.recovery, bmc)
        announce("recovery_flash", {"component": c.name, "version": c.version, "path": c.recovery, "because": why})
        if i == 0:  # a looping server resets every few seconds: stop it, so no reset lands mid-flash
            driver.power_off()
        driver.flash(c.name, image, sha, c.version)  # verifies by a fresh inventory read
        flashed.append(f"{c.name} {c.version} ({c.recovery}, recovery)")
    return flashed


def _needs_hands(store, node: str, model: str, stuck: list[FirmwareComponent], bmc: str, why: str,
                 driver) -> NeedsHands:
    what = "; ".join(f"{c.name} {c.version} from {c.image.file} (sha256 {c.image.sha256})" for c in stuck)
    cannot = [c.name for c in stuck if c.recovery]
    path = (f"its BMC does not offer {', '.join(cannot)} over {stuck[0].recovery}" if cannot
            else f"the {model} manifest names no recovery path for {', '.join(c.name for c in stuck)}")
    msg = (f"needs hands: {node} cannot netboot ({why}) and {path}; flash {what} through the BMC at {bmc} "
           f"or at the console, then `provisioner node clear {node} --reason ...` and apply again")
    store.node_event(node, "rollout", "needs_hands", {"components": [c.name for c in stuck], "bmc": bmc,
                                                      "because": why})
    log.error("recovery.needs_hands node=%s components=%s bmc=%s", node, ",".join(c.name for c in stuck), bmc)
    return NeedsHands(msg)
