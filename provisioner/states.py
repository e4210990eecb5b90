"""The node lifecycle, rollout statuses and steps: enums and the transition tables. Pure.

Every writer of a node's state or of a rollout's status asks this module for the edge first;
an edge that is not in the table raises IllegalTransition (a bug, or a race another writer won).

    new ──flash/install──► flashing/installing ──verified──► active
     │                          │                              │
     │                          └─fail──► failed ──clear──► ready ──flash/install──► …
     │                                      │
     └───── hold (runs a blocked version) ──► held ──release──► ready
    any idle state ──maintenance_on──► maintenance ──maintenance_off──► ready
    failed (no out-of-band path) ──needs_hands──► needs-hands ──clear──► ready
"""

from __future__ import annotations

from enum import StrEnum


class IllegalTransition(RuntimeError):
    """An edge the table does not have: a bug in the caller, or another writer changed the row first."""


class NodeState(StrEnum):
    NEW = "new"  # in the inventory, never provisioned
    READY = "ready"  # cleared by an operator or released from a hold: no rollout owns it
    FLASHING = "flashing"  # a rollout power-cycled it into PXE for the flasher
    FLASHED = "flashed"  # the flasher reported new versions; the BMC read is still to confirm
    INSTALLING = "installing"  # a rollout power-cycled it into PXE for the installer
    VERIFYING = "verifying"  # a rollout is watching it boot on the firmware just flashed
    ACTIVE = "active"  # verified at its release's pins
    FAILED = "failed"  # a rollout step failed (or it is presumed boot-looping)
    HELD = "held"  # runs a blocked version; the netboot gate hands it nothing destructive
    MAINTENANCE = "maintenance"  # an operator took it out of rollouts
    NEEDS_HANDS = "needs-hands"  # cannot be recovered remotely: someone has to go to the rack


# States a node is in while a rollout works on it.
BUSY = frozenset({NodeState.FLASHING, NodeState.FLASHED, NodeState.INSTALLING, NodeState.VERIFYING})
# States that need a person or a recovery before the node is at its pins again (plan: `recover`).
NEEDS_RECOVERY = frozenset({NodeState.FAILED, NodeState.NEEDS_HANDS})
# States a rollout may start a node from.
STARTABLE = frozenset({NodeState.NEW, NodeState.READY, NodeState.ACTIVE, NodeState.FAILED, NodeState.HELD,
                       *BUSY})  # BUSY: a resumed rollout picks its node up where it was

_N = NodeState
NODE_TRANSITIONS: dict[tuple[NodeState, str], NodeState] = {}


def _edges(sources, event: str, target: NodeState) -> None:
    for s in sources:
        NODE_TRANSITIONS[(s, event)] = target


# A rollout sends the node into PXE for the flasher (also again, when a killed rollout resumes)
_edges(STARTABLE, "flash", _N.FLASHING)
# The flasher's "flashed" callback: the node says it wrote the images (the BMC read confirms later)
_edges({_N.FLASHING}, "flashed", _N.FLASHED)
# A rollout sends the node into PXE for the installer
_edges(STARTABLE, "install", _N.INSTALLING)
# A rollout power-cycles the node to see it boot on its new firmware
_edges(STARTABLE, "boot_check", _N.VERIFYING)
# A fresh BMC read equals every pin: the node is at its release
_edges(STARTABLE, "verified", _N.ACTIVE)
# A step failed, or the node never reported back after power-on (presumed boot-looping)
_edges(STARTABLE | {_N.MAINTENANCE}, "fail", _N.FAILED)
# The node runs a version blocked since, or its rollout holds it: nothing destructive until re-provisioned
_edges({_N.NEW, _N.READY, _N.ACTIVE, _N.FAILED, _N.HELD}, "hold", _N.HELD)
# Nothing it runs is blocked any more (`unblock`): it may take part in rollouts again
_edges({_N.HELD}, "release", _N.READY)
# An operator takes the node out of rollouts (`node maintenance on`)
_edges({_N.NEW, _N.READY, _N.ACTIVE, _N.FAILED, _N.HELD, _N.NEEDS_HANDS}, "maintenance_on", _N.MAINTENANCE)
# An operator gives it back (`node maintenance off`)
_edges({_N.MAINTENANCE}, "maintenance_off", _N.READY)
# After a fresh BMC read, an operator says the failure is dealt with (`node clear`)
_edges({_N.FAILED, _N.NEEDS_HANDS, _N.HELD}, "clear", _N.READY)
# No remote path can change the firmware that must change: a person has to
_edges({_N.FAILED, *BUSY}, "needs_hands", _N.NEEDS_HANDS)


def node_sources(event: str) -> tuple[frozenset[NodeState], NodeState]:
    """(the states `event` may leave from, the state it leads to); IllegalTransition if unknown."""
    found = {s: t for (s, e), t in NODE_TRANSITIONS.items() if e == event}
    if not found:
        raise IllegalTransition(f"no node event {event!r}")
    targets = set(found.values())
    assert len(targets) == 1, (event, targets)  # each event leads to one state, whatever it left
    return frozenset(found), targets.pop()


def next_node_state(current: str, event: str) -> NodeState:
    try:
        return NODE_TRANSITIONS[(NodeState(current), event)]
    except (KeyError, ValueError):
        raise IllegalTransition(f"a node in state {current!r} cannot take event {event!r}") from None


class RolloutStatus(StrEnum):
    RUNNING = "running"  # a holder of the environment's lease works on it (or crashed: the lease says)
    INTERRUPTED = "interrupted"  # stopped by a signal after its running steps ended: `apply` resumes it
    HALTED = "halted"  # stopped by failures or a block: sticky until resumed, aborted or superseded
    DONE = "done"
    SUPERSEDED = "superseded"  # a rollback or a new release replaced it before it ended
    ABORTED = "aborted"  # an operator gave it up (`rollout abort`)


_R = RolloutStatus
ROLLOUT_TRANSITIONS: dict[tuple[RolloutStatus, str], RolloutStatus] = {
    # Every node ended done (or held)
    (_R.RUNNING, "finish"): _R.DONE,
    # The failure threshold was reached, or a block covers a version the release pins
    (_R.RUNNING, "halt"): _R.HALTED,
    # SIGINT/SIGTERM: the running steps ended, nothing new started
    (_R.RUNNING, "interrupt"): _R.INTERRUPTED,
    # `apply` picks an interrupted rollout up again
    (_R.INTERRUPTED, "resume"): _R.RUNNING,
    # A crashed holder's rollout is taken over once its lease expired
    (_R.RUNNING, "resume"): _R.RUNNING,
    # An operator looked at the halt and lets it go on (`rollout resume --reason`)
    (_R.HALTED, "resume"): _R.RUNNING,
    # An operator gives the halted (or interrupted) rollout up (`rollout abort --reason`)
    (_R.HALTED, "abort"): _R.ABORTED,
    (_R.INTERRUPTED, "abort"): _R.ABORTED,
    # A rollback or a new release replaces what was unfinished
    (_R.RUNNING, "supersede"): _R.SUPERSEDED,
    (_R.HALTED, "supersede"): _R.SUPERSEDED,
    (_R.INTERRUPTED, "supersede"): _R.SUPERSEDED,
}
# Statuses a new rollout of the environment must deal with first.
UNFINISHED = frozenset({_R.RUNNING, _R.INTERRUPTED, _R.HALTED})


def rollout_sources(event: str) -> tuple[frozenset[RolloutStatus], RolloutStatus | None]:
    """(the statuses `event` may leave from, the status it leads to if it is always the same)."""
    found = {s: t for (s, e), t in ROLLOUT_TRANSITIONS.items() if e == event}
    if not found:
        raise IllegalTransition(f"no rollout event {event!r}")
    targets = set(found.values())
    return frozenset(found), targets.pop() if len(targets) == 1 else None


def next_rollout_status(current: str, event: str) -> RolloutStatus:
    try:
        return ROLLOUT_TRANSITIONS[(RolloutStatus(current), event)]
    except (KeyError, ValueError):
        raise IllegalTransition(f"a rollout {current!r} cannot take event {event!r}") from None


class NodeRolloutStatus(StrEnum):
    """One node's part in one rollout."""

    PENDING = "pending"  # not started, or stopped between steps (halt, signal): resumable
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    HELD = "held"  # planned `hold`: nothing safe to do for it in this rollout
    SKIPPED = "skipped"  # its rollout was aborted before it started


_NR = NodeRolloutStatus
NODE_ROLLOUT_TRANSITIONS: dict[tuple[NodeRolloutStatus, str], NodeRolloutStatus] = {
    # The engine starts the node's first step
    (_NR.PENDING, "start"): _NR.RUNNING,
    # A resumed rollout picks a node up that was running when its holder died
    (_NR.RUNNING, "start"): _NR.RUNNING,
    # Halt or signal between two steps: the node waits, resumable
    (_NR.RUNNING, "pause"): _NR.PENDING,
    (_NR.PENDING, "pause"): _NR.PENDING,
    # Its last step (verify) passed
    (_NR.RUNNING, "finish"): _NR.DONE,
    # A step failed
    (_NR.RUNNING, "fail"): _NR.FAILED,
    # `rollout resume` retries the nodes that failed
    (_NR.FAILED, "retry"): _NR.PENDING,
    # `rollout abort`: nodes not started are skipped
    (_NR.PENDING, "abort"): _NR.SKIPPED,
}


class Step(StrEnum):
    PREPARE = "prepare"  # read the BMC inventory afresh
    OOB_FLASH = "oob_flash"  # HPM.1 flash of components the manifest marks `hpm`
    INBAND_FLASH = "inband_flash"  # PXE into the flasher, wait for "flashed", re-read the BMC
    INSTALL = "install"  # PXE into the installer, wait for "installed"
    BOOT_CHECK = "boot_check"  # power-cycle, wait for "booted": the firmware posts
    VERIFY = "verify"  # a fresh BMC read equals every pin


_S = Step
STEPS: dict[str, tuple[Step, ...]] = {
    "reflash": (_S.PREPARE, _S.OOB_FLASH, _S.INBAND_FLASH, _S.BOOT_CHECK, _S.VERIFY),
    "reimage": (_S.PREPARE, _S.INSTALL, _S.VERIFY),
    "reprovision": (_S.PREPARE, _S.OOB_FLASH, _S.INBAND_FLASH, _S.INSTALL, _S.VERIFY),
    # a failed / presumed boot-looping node: flash what differs, see it boot (install re-checks the boot)
    "recover": (_S.PREPARE, _S.OOB_FLASH, _S.INBAND_FLASH, _S.INSTALL, _S.VERIFY),
}
