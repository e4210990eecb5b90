"""The boot service: the seam between the routes (TFTP, HTTP) and the store, gate and renderer.

Every route asks `BootService` and nothing else, so every route hands a node the same decision.
A boot script carries the token of the node's expected boot (see `provisioner.store.boots`);
a report is taken only when it fits that boot: the event its action allows, its release, its images.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from provisioner.errors import ArtifactMismatch, BadRequest, RateLimited, ReportRefused
from provisioner.netboot.gate import Blocked, NetbootDecision, decide
from provisioner.netboot.limits import Limits, RateLimit
from provisioner.netboot.render import Renderer, context_for
from provisioner.observability import metrics
from provisioner.releases.artifacts import ArtifactStore
from provisioner.releases.view import ReleaseView
from provisioner.spec.models import Node
from provisioner.states import IllegalTransition, NodeState, next_node_state
from provisioner.store.boots import Boot, Retention
from provisioner.store.repo import Store

log = logging.getLogger("provisioner.netboot")

HEX = r"[0-9a-f]{2}"
MAC_HYPHEN = rf"{HEX}(?:-{HEX}){{5}}"
TFTP_PATHS = [
    ("pxelinux", re.compile(rf"""^(?:.*/)?pxelinux\.cfg/
        01-(?P<mac>{MAC_HYPHEN})      # ARP htype 1 (Ethernet) + MAC, as pxelinux asks
        $""", re.VERBOSE)),
    ("grub", re.compile(rf"""^(?:.*/)?grub\.cfg-
        01-(?P<mac>{MAC_HYPHEN})      # GRUB's net_default_mac form
        $""", re.VERBOSE)),
    ("ipxe", re.compile(rf"""^(?:.*/)?boot-
        (?P<mac>{MAC_HYPHEN})         # iPXE's ${{net0/mac:hexhyp}}
        \.ipxe$""", re.VERBOSE)),
]
MAC = re.compile(r"""^(?:
      [0-9a-f]{2}(?P<sep>[:-])[0-9a-f]{2}(?:(?P=sep)[0-9a-f]{2}){4}   # six octets, one separator style
    | [0-9a-f]{12}                                                  # or twelve bare hex digits
    )$""", re.VERBOSE | re.IGNORECASE)
# A boot's last word: it closes the boot's token. "booted" is a local boot that reached iPXE,
# which proves the firmware posts (a boot-looping BIOS never gets there).
FINAL_EVENTS = {"flashed": "flashed", "installed": "installed", "failed": "failed", "booted": "booted"}
EVENTS = {"started", "held", "progress", *FINAL_EVENTS}
# What each kind of boot may report: a local boot cannot say it installed anything.
EVENTS_OF: dict[str, frozenset[str]] = {
    "install": frozenset({"started", "progress", "installed", "failed"}),
    "flash": frozenset({"started", "progress", "flashed", "failed"}),
    "local": frozenset({"booted", "failed"}),
    "hold": frozenset({"held"}),
}
# Reports that change the node: taken only from a boot a rollout started and waits on.
CHANGES_NODE = frozenset({"installed", "flashed", "failed"})


def normalize_mac(mac: str) -> str | None:
    if not MAC.match(mac):
        return None
    digits = re.sub(r"[:-]", "", mac).lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def boot_images(decision: NetbootDecision, release: ReleaseView | None) -> list[str]:
    """The digests a boot script for `decision` names (kernel, initrd, rootfs, firmware images)."""
    if release is None or not decision.profile:
        return []
    prof = release.profile(decision.profile)
    out = {ref.sha256 for ref in (prof.kernel, prof.initrd, prof.rootfs) if ref} if prof else set()
    out |= {c.image["sha256"] for c in decision.components}
    return sorted(out)


class BootService:
    def __init__(self, store: Store, artifacts: ArtifactStore, http_base: str, mac_cache_seconds: float = 2.0,
                 *, limits: Limits | None = None, retention: Retention | None = None):
        self.store, self.artifacts = store, artifacts
        self.limits, self.retention = limits or Limits(), retention or Retention()
        self._fetches = RateLimit(self.limits.script_burst, self.limits.script_per_second)
        self._pruned_at = 0.0
        self.http_base = http_base.rstrip("/")
        self.renderer = Renderer(artifacts)
        self._releases: dict[str, ReleaseView] = {}  # release id -> its view (nodes validated once)
        self._macs: dict[str, str] = {}
        self._macs_at = 0.0
        self._mac_ttl = mac_cache_seconds
        self._lock = threading.Lock()

    # -- lookups ------------------------------------------------------------------------------
    def _node_name(self, mac: str) -> str | None:
        name = self._macs.get(mac)
        if name is None and time.monotonic() - self._macs_at > self._mac_ttl:
            index = {m: n.name for n in self.store.nodes() for m in n.macs}
            with self._lock:
                self._macs, self._macs_at = index, time.monotonic()
            name = index.get(mac)
        return name

    def release(self, release_id: str | None) -> ReleaseView | None:
        """The release's typed view, read from the store (verified against its id) once per release."""
        if release_id is None:
            return None
        view = self._releases.get(release_id)
        if view is None:
            view = ReleaseView.of(self.store.get_release(release_id))
            view.node("")  # validate the inventory now, not in the first boot's request
            self._releases[release_id] = view
        return view

    def decide(self, mac: str):
        """(decision, the spec's node or None, the release's view or None)."""
        return self._decide(mac)[:3]

    def _decide(self, mac: str):
        """decide(), and the node's live boot row as read with the same view (or None)."""
        name = self._node_name(mac)
        row, release_id, blocks = self.store.boot_view(name) if name else (None, None, [])
        if row is None:
            return decide(None, "unknown", None, None, [], {}), None, None, None
        release = self.release(release_id)
        node = release.node(row["name"]) if release is not None else None
        if node is None:  # not in its environment's release (added since, or no release): as the store has it
            node = Node.model_construct(name=row["name"], model=row["model"], environment=row["environment"],
                                        boot_profile="", macs=row["macs"])
        blocked = [Blocked(b["component"], b["version"], b["reason"], b["model"]) for b in blocks]
        d = decide(node, row["state"], release, blocked, dict(row["observed"] or {}), row["installed_release"])
        return d, node, release, row.get("live_boot")

    # -- boot configs -------------------------------------------------------------------------
    def boot_config(self, mac: str, kind: str) -> str:
        norm = normalize_mac(mac)
        if norm is None:
            raise BadRequest(f"{mac[:40]!r} is not a MAC address (six octets with ':' or '-', or 12 hex digits)")
        if not self._fetches.allow(norm):
            raise RateLimited(f"{norm} asked for its boot script too often; at most "
                              f"{self.limits.script_per_second:g}/s after a burst of {self.limits.script_burst}")
        started = time.perf_counter()
        decision, node, release, live = self._decide(norm)
        metrics.boot(decision.action, kind)
        token = None
        if node:
            event = {"source": "netboot", "event": decision.action,
                     "details": {"reason": decision.reason, "kind": kind, "release": decision.release_id,
                                 "components": [c.name for c in decision.components]}}
            if decision.release_id:  # every boot of a known node reports back, even a local one
                token = self.store.boots.for_decision(node.name, decision.action, decision.release_id,
                                                      boot_images(decision, release), event, live)
            else:
                self.store.node_event(node.name, **event)
            self._maybe_prune()
        if log.isEnabledFor(logging.INFO):  # the line is built only when someone reads it
            log.info(decision.log_line(norm))
        variables = context_for(decision, release, node, mac=norm, http_base=self.http_base, token=token)
        text = self._render(decision, kind, release, variables)
        log.debug("netboot.rendered mac=%s kind=%s ms=%.2f", norm, kind, (time.perf_counter() - started) * 1000)
        return text

    def _maybe_prune(self) -> None:
        t = time.monotonic()
        if t - self._pruned_at > self.retention.every.total_seconds():
            self._pruned_at = t
            self.store.boots.prune(self.retention)

    def _render(self, decision: NetbootDecision, kind: str, release: ReleaseView | None, variables: dict) -> str:
        if release is None:
            return _FALLBACK[kind].format(reason=decision.reason, mac=variables["mac"])
        return self.renderer.render(decision, kind, release, variables)

    def bootstrap_ipxe(self) -> str:
        return (f"#!ipxe\n# provisioner bootstrap: hand over to HTTP, where the netboot gate decides\n"
                f"dhcp || goto retry\nchain {self.http_base}/boot/${{net0/mac:hexhyp}}.ipxe || goto retry\n"
                f":retry\nsleep 5\nchain {self.http_base}/boot/${{net0/mac:hexhyp}}.ipxe || exit 1\n")

    def flasher_config(self, node_name: str, token: str) -> str:
        boot = self.store.boots.live(node_name, token)
        if boot.action != "flash":
            raise ReportRefused(f"token of {node_name} was issued for {boot.action}, not flash")
        row = self.store.node(node_name)
        decision, node, release = self.decide(row.macs[0])
        if decision.action != "flash" or decision.release_id != boot.release_id:
            raise ReportRefused(f"{node_name} is no longer due a flash ({decision.action}: {decision.reason})")
        variables = context_for(decision, release, node, mac=row.macs[0], http_base=self.http_base, token=token)
        return self.renderer.render(decision, "flasher", release, variables)

    def tftp_file(self, path: str) -> bytes | None:
        """Resolver for the TFTP server: per-MAC configs and the iPXE bootstrap; None = not found."""
        path = path.lstrip("/")
        if path in ("boot.ipxe", "autoexec.ipxe"):
            return self.bootstrap_ipxe().encode()
        if path.endswith("pxelinux.cfg/default"):
            return _FALLBACK["pxelinux"].format(reason="no per-MAC config asked for", mac="-").encode()
        for kind, rx in TFTP_PATHS:
            m = rx.match(path.lower())
            if m:
                try:
                    return self.boot_config(m["mac"], kind).encode()
                except RateLimited as e:  # TFTP has no 429: the client hears "not found" and retries later
                    log.info("tftp.refused file=%s reason=%s", path, e)
                    return None
        return None

    # -- callbacks ----------------------------------------------------------------------------
    def callback(self, node_name: str, token: str, event: str, parse) -> dict:
        """Take one report. `parse()` turns the body into a report (BadRequest if it is not one);
        it is called once the token is known to allow `event`, so a wrong boot is a 409 first."""
        if event not in EVENTS:
            raise BadRequest(f"unknown callback event {event[:32]!r}; one of {sorted(EVENTS)}")
        boot = self.store.boots.live(node_name, token)
        self._refuse(node_name, event, self._misfit(node_name, boot, event), {})
        report = parse()

        def check(b: Boot) -> None:  # again inside the report's transaction
            why = self._misfit(node_name, b, event) or self._mismatch(b, report)
            if why:
                raise ReportRefused(why)
            if b.reports >= self.limits.reports_per_boot:
                raise RateLimited(f"{node_name}: {b.reports} reports for this boot; at most "
                                  f"{self.limits.reports_per_boot}")

        def update(row, b: Boot) -> None:
            # The node changes in the same transaction as the event is written: whoever waits for
            # the event (the rollout) sees the new state, and its next step is never overwritten.
            # Reported firmware is kept with the event only: the rollout's fresh BMC read decides.
            if event == "flashed" and row.state == NodeState.FLASHING:
                row.state = next_node_state(row.state, "flashed")
                row.state_reason = "flasher reported; the BMC is read next"
            elif event == "installed":
                row.installed_release = b.release_id
                row.state_reason = "installer reported success"
            elif event == "failed":
                try:  # provisioner/states.py: every writer asks it; needs-hands stays needs-hands
                    row.state = next_node_state(row.state, "fail")
                except IllegalTransition:
                    log.warning("netboot.callback node=%s state=%s kept on failure report", node_name, row.state)
                row.state_reason = f"{b.action} failed: {report.error}"

        details = {"boot_action": boot.action, **report.model_dump(exclude_none=True, exclude={"event"})}
        try:
            boot = self.store.boots.report(
                node_name, token, check, FINAL_EVENTS.get(event),
                {"source": "callback", "event": event, "details": details},
                node_update=update if event in CHANGES_NODE else None)
        except ReportRefused as e:
            self._refuse(node_name, event, str(e), details)
        log.info("netboot.callback node=%s event=%s action=%s", node_name, event, boot.action)
        return {"ok": True, "node": node_name, "event": event}

    @staticmethod
    def _misfit(node_name: str, boot: Boot, event: str) -> str:
        if event not in EVENTS_OF.get(boot.action, ()):
            return (f"the token of {node_name} is for a {boot.action} boot, which reports "
                    f"{'/'.join(sorted(EVENTS_OF.get(boot.action, ())))}, not {event}")
        if event in CHANGES_NODE and boot.opened_by != "rollout":
            return (f"no rollout is waiting on this boot of {node_name}: a {event} report is taken only "
                    f"from a boot a rollout started")
        return ""

    @staticmethod
    def _mismatch(boot: Boot, report) -> str:
        if report.release is not None and report.release != boot.release_id:
            return f"report names release {report.release[:12]!r}; this boot is for {(boot.release_id or '-')[:12]}"
        if report.images is not None and not set(report.images) <= set(boot.images or ()):
            return "report names images this boot was not handed"
        return ""

    def _refuse(self, node_name: str, event: str, why: str, details: dict) -> None:
        if not why:
            return
        log.warning("netboot.suspicious node=%s event=%s reason=%s", node_name, event, why)
        self.store.boots.suspicious(node_name, why, {"event": event, **details})
        raise ReportRefused(why)

    # -- artifacts ----------------------------------------------------------------------------
    def artifact_unavailable(self, digest: str, error: Exception) -> None:
        """An artifact could not be served: every boot the rollout waits on that needs it fails now."""
        what = "altered" if isinstance(error, ArtifactMismatch) else "missing"
        reason = f"artifact sha256:{digest[:12]} is {what} in the boot server's store"
        nodes = self.store.boots.fail_boots_using(digest, reason)
        log.error("http.artifact_unavailable digest=%s problem=%s failed_boots=%s", digest, what,
                  ",".join(nodes) or "-")


_FALLBACK = {
    "ipxe": "#!ipxe\n# provisioner: {reason}\necho provisioner: {mac}: {reason}\nexit 1\n",
    "pxelinux": "# provisioner: {reason}\nDEFAULT local\nPROMPT 0\nTIMEOUT 1\nLABEL local\n  LOCALBOOT 0\n",
    "grub": "# provisioner: {reason}\nexit\n",
}
