"""The boot service: the seam between the routes (TFTP, HTTP) and the store, gate and renderer.

Every route asks `BootService` and nothing else, so every route hands a node the same decision.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from provisioner.errors import NetbootError, PolicyViolation
from provisioner.netboot.gate import Blocked, NetbootDecision, decide
from provisioner.netboot.render import Renderer, context_for
from provisioner.observability import metrics
from provisioner.releases.artifacts import ArtifactStore
from provisioner.states import IllegalTransition, NodeState, next_node_state
from provisioner.store.repo import Store, now

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
# A boot's last word: it closes the boot's token. "booted" is a local boot that reached iPXE,
# which proves the firmware posts (a boot-looping BIOS never gets there).
FINAL_EVENTS = {"flashed": "flashed", "installed": "installed", "failed": "failed", "booted": "booted"}
EVENTS = {"started", "held", "progress", *FINAL_EVENTS}


def normalize_mac(mac: str) -> str | None:
    digits = re.sub(r"[^0-9a-fA-F]", "", mac).lower()
    if len(digits) != 12:
        return None
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


class BootService:
    def __init__(self, store: Store, artifacts: ArtifactStore, http_base: str, mac_cache_seconds: float = 2.0):
        self.store, self.artifacts = store, artifacts
        self.http_base = http_base.rstrip("/")
        self.renderer = Renderer(artifacts)
        self._releases: dict[str, dict] = {}
        self._release_nodes: dict[str, dict[str, dict]] = {}  # release -> node name -> node
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

    def release_doc(self, release_id: str | None) -> dict | None:
        if release_id is None:
            return None
        doc = self._releases.get(release_id)
        if doc is None:
            doc = self.store.get_release(release_id).document  # verified against its id once
            self._release_nodes[release_id] = {n["name"]: n for r in doc["inventory"]["racks"] for n in r["nodes"]}
            self._releases[release_id] = doc
        return doc

    def decide(self, mac: str):
        """(decision, node dict from the release or None, release document or None)."""
        name = self._node_name(mac)
        row, release_id, blocks = self.store.boot_view(name) if name else (None, None, [])
        if row is None:
            return decide(None, "unknown", None, None, [], {}), None, None
        doc = self.release_doc(release_id)
        node = self._release_nodes[release_id].get(row["name"]) if doc else None
        node = node or {"name": row["name"], "model": row["model"], "environment": row["environment"],
                        "boot_profile": "", "macs": row["macs"]}
        blocked = [Blocked(b["component"], b["version"], b["reason"], b["model"]) for b in blocks]
        d = decide(node, row["state"], release_id, doc, blocked, dict(row["observed"] or {}),
                   row["installed_release"])
        return d, node, doc

    # -- boot configs -------------------------------------------------------------------------
    def boot_config(self, mac: str, kind: str) -> str:
        norm = normalize_mac(mac)
        if norm is None:
            raise NetbootError(f"{mac!r} is not a MAC address")
        started = time.perf_counter()
        decision, node, doc = self.decide(norm)
        metrics.boot(decision.action, kind)
        token = None
        if node:
            event = {"source": "netboot", "event": decision.action,
                     "details": {"reason": decision.reason, "kind": kind, "release": decision.release_id,
                                 "components": [c.name for c in decision.components]}}
            if decision.release_id:  # every boot of a known node reports back, even a local one
                token = self.store.issue_token(node["name"], decision.release_id, decision.action, event)
            else:
                self.store.node_event(node["name"], **event)
        if log.isEnabledFor(logging.INFO):  # the line is built only when someone reads it
            log.info(decision.log_line(norm))
        variables = context_for(decision, doc, node, mac=norm, http_base=self.http_base, token=token)
        text = self._render(decision, kind, doc, variables)
        log.debug("netboot.rendered mac=%s kind=%s ms=%.2f", norm, kind, (time.perf_counter() - started) * 1000)
        return text

    def _render(self, decision: NetbootDecision, kind: str, doc: dict | None, variables: dict) -> str:
        if doc is None:
            return _FALLBACK[kind].format(reason=decision.reason, mac=variables["mac"])
        return self.renderer.render(decision, kind, decision.release_id, doc, variables)

    def bootstrap_ipxe(self) -> str:
        return (f"#!ipxe\n# provisioner bootstrap: hand over to HTTP, where the netboot gate decides\n"
                f"dhcp || goto retry\nchain {self.http_base}/boot/${{net0/mac:hexhyp}}.ipxe || goto retry\n"
                f":retry\nsleep 5\nchain {self.http_base}/boot/${{net0/mac:hexhyp}}.ipxe || exit 1\n")

    def flasher_config(self, node_name: str, token: str) -> str:
        tok = self.store.check_token(node_name, token)
        if tok.action != "flash":
            raise PolicyViolation(f"token of {node_name} was issued for {tok.action}, not flash")
        row = self.store.node(node_name)
        decision, node, doc = self.decide(row.macs[0])
        if decision.action != "flash" or decision.release_id != tok.release_id:
            raise PolicyViolation(f"{node_name} is no longer due a flash ({decision.action}: {decision.reason})")
        variables = context_for(decision, doc, node, mac=row.macs[0], http_base=self.http_base, token=token)
        return self.renderer.render(decision, "flasher", decision.release_id, doc, variables)

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
                return self.boot_config(m["mac"], kind).encode()
        return None

    # -- callbacks ----------------------------------------------------------------------------
    def callback(self, node_name: str, token: str, event: str, payload: dict) -> dict:
        if event not in EVENTS:
            raise NetbootError(f"unknown callback event {event!r}; one of {sorted(EVENTS)}")
        details = {k: v for k, v in payload.items() if k in ("firmware", "release", "error", "message", "step")}

        def update(row, tok) -> None:
            # The node changes in the same transaction as the event is written: whoever waits for
            # the event (the rollout) sees the new state, and its next step is never overwritten.
            details["boot_action"] = tok.action
            if event == "flashed":
                fw = {str(k): str(v) for k, v in (payload.get("firmware") or {}).items()}
                row.observed, row.observed_at = {**(row.observed or {}), **fw}, now()
                if row.state == NodeState.FLASHING:
                    row.state, row.state_reason = next_node_state(row.state, "flashed"), "flasher reported new versions"
            elif event == "installed":
                row.installed_release = payload.get("release") or tok.release_id
                row.state_reason = "installer reported success"
            elif event == "failed":
                try:  # provisioner/states.py: every writer asks it; needs-hands stays needs-hands
                    row.state = next_node_state(row.state, "fail")
                except IllegalTransition:
                    log.warning("netboot.callback node=%s state=%s kept on failure report", node_name, row.state)
                row.state_reason = f"{tok.action} failed: {payload.get('error', 'no reason given')}"

        tok = self.store.check_token(node_name, token, close_with=FINAL_EVENTS.get(event), node_update=update,
                                     event={"source": "callback", "event": event, "details": details})
        log.info("netboot.callback node=%s event=%s action=%s", node_name, event, tok.action)
        return {"ok": True, "node": node_name, "event": event}


_FALLBACK = {
    "ipxe": "#!ipxe\n# provisioner: {reason}\necho provisioner: {mac}: {reason}\nexit 1\n",
    "pxelinux": "# provisioner: {reason}\nDEFAULT local\nPROMPT 0\nTIMEOUT 1\nLABEL local\n  LOCALBOOT 0\n",
    "grub": "# provisioner: {reason}\nexit\n",
}
