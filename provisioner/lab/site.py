"""A simulated site built from the inventory: BMCs (real IPMI or Redfish on loopback, as each node's
`bmc.driver` says), hosts that netboot, and, unless told otherwise, the site's boot services — all
in one process.

    lab = Lab(ctx).start()      # returns once every BMC answers
    lab.status()                # name, bmc_address, bmc_port, username, password*, power, firmware
                                # (*only the lab's own generated secret; null when it came from the env)
    lab.set_boot_loop("bios", "1.14.0")
    lab.stop()

State lives under DATA/lab/: bmc-state.json and redfish-state.json (power, boot device, firmware
per node, kept across restarts), disks/<node>.json (what the installer wrote), and the Redfish
BMCs' CA (redfish-ca.pem, copied to DATA/secrets/<credentials>.ca.pem for the drivers to trust).
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

from provisioner.context import Context
from provisioner.lab.bmc import SimSite
from provisioner.lab.host import NetbootHost
from provisioner.lab.redfish_site import RedfishSite

log = logging.getLogger("provisioner.lab")

# What a new lab server runs before the pipeline has touched it: the pins, except these
# "factory" versions, so the first rollout has real work to do.
FACTORY = {
    "r650": {"bmc": "7.00.60"},
    "dl360g10": {"nic": "14.30.0"},
}


def ensure_lab_secret(ctx: Context, credentials: str) -> str:
    """The lab's BMC password: the credentials' env var if set, else DATA/secrets/<name> (created)."""
    return _lab_secret(ctx, credentials)[0]


def _lab_secret(ctx: Context, credentials: str) -> tuple[str, bool]:
    """(password, whether it is the lab's own generated secret, which `lab status` may show)."""
    import os

    cred = ctx.spec.inventory.credentials[credentials]
    if cred.password_env and os.environ.get(cred.password_env):
        return os.environ[cred.password_env], False
    path = ctx.settings.data_dir / "secrets" / credentials
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # Created 0600 in the open call itself: no moment where another user could read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(12) + "\n")
    return path.read_text().strip(), True


def shown_password(node: dict) -> str | None:
    """What status output may print of a node's BMC password: only the lab's own generated secret."""
    return node["password"] if node.get("password_generated") else None


def lab_nodes(ctx: Context) -> list[dict]:
    spec = ctx.spec
    nodes = []
    for _rack, n in spec.nodes():
        pins = {c.name: c.version for c in spec.manifests[n.model].components}
        username = spec.inventory.credentials[n.bmc.credentials].username
        mapping = spec.manifests[n.model].redfish
        password, generated = _lab_secret(ctx, n.bmc.credentials)
        # What this model's BMC can flash itself: what the manifest flashes through it, or names as
        # the way in when the server cannot netboot. Nothing more: a lab BMC that flashed anything
        # would hide an engine that tries a path the hardware does not have.
        hpm = [c.name for c in spec.manifests[n.model].components if "hpm" in (c.method, c.recovery)]
        nodes.append({"name": n.name, "model": n.model, "bmc_address": n.bmc.address, "bmc_port": n.bmc.port,
                      "username": username, "password": password, "password_generated": generated,
                      "firmware": {**pins, **FACTORY.get(n.model, {})}, "power": "on", "hpm": hpm,
                      "driver": n.bmc.driver, "credentials": n.bmc.credentials,
                      "software_ids": dict(mapping.software_ids) if mapping else {}})
    return nodes


class LabSites:
    """The lab's IPMI site and Redfish site behind SimSite's outside hooks, each call routed by node."""

    def __init__(self, sites: list):
        self.sites = [s for s in sites if s is not None]
        self._by_node = {name: s for s in self.sites for name in s.nodes}
        self.on_power_on = None

    def site_of(self, node: str):
        try:
            return self._by_node[node]
        except KeyError:
            raise ValueError(f"no lab node {node!r}") from None

    def start(self, timeout: float = 30) -> LabSites:
        for s in self.sites:
            s.on_power_on = self.on_power_on
            s.start(timeout=timeout)
        return self

    def stop(self) -> None:
        for s in self.sites:
            s.stop()

    def state(self, node: str) -> dict:
        return self.site_of(node).state(node)

    def states(self) -> dict[str, dict]:
        return {n: st for s in self.sites for n, st in s.states().items()}

    def last_boot(self, node: str) -> dict | None:
        return self.site_of(node).last_boot(node)

    def firmware(self, node: str) -> dict[str, str]:
        return self.site_of(node).firmware(node)

    def set_firmware(self, node: str, component: str, version: str, *, how: str = "inband_flash") -> None:
        self.site_of(node).set_firmware(node, component, version, how=how)

    def hand_flash(self, node: str, component: str, version: str) -> None:
        self.site_of(node).hand_flash(node, component, version)

    def set_power(self, node: str, power: str) -> None:
        self.site_of(node).set_power(node, power)

    def set_fault(self, node: str, **faults) -> None:
        self.site_of(node).set_fault(node, **faults)

    def lose_power(self, node: str) -> None:
        self.site_of(node).lose_power(node)

    def clear_faults(self, node: str | None = None) -> None:
        for s in [self.site_of(node)] if node else self.sites:
            s.clear_faults(node)

    def flush(self) -> None:
        for s in self.sites:
            s.flush()

    def driver_of(self, node: str) -> str:
        return "redfish" if isinstance(self.site_of(node), RedfishSite) else "ipmi"


class Lab:
    def __init__(self, ctx: Context, *, serve: bool = True, tftp_bind: str = "127.0.0.1:0",
                 http_bind: str = "127.0.0.1:0", boot_services=None, tftp: tuple[str, int] | None = None,
                 http_base: str | None = None, activation_s: float = 0.05, flash_seconds: float = 0.02):
        self.ctx = ctx
        self.dir = ctx.settings.data_dir / "lab"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = lab_nodes(ctx)
        self.services = boot_services
        self._serve = serve and boot_services is None
        self._binds = (tftp_bind, http_bind)
        self._tftp, self._http_base = tftp, http_base
        self.activation_s, self.flash_seconds = activation_s, flash_seconds
        self.site: LabSites | None = None
        self.host: NetbootHost | None = None

    def start(self) -> Lab:
        if self._serve:
            from provisioner.netboot.dhcp import populate_boot_files
            from provisioner.netboot.service import BootService
            from provisioner.serve.services import BootServices

            boot_files = self.ctx.settings.data_dir / "boot-files"
            populate_boot_files(boot_files)
            _ensure_stand_in_loaders(boot_files)
            self.ctx.store.sync_nodes(self.ctx.spec)
            svc = BootService(self.ctx.store, self.ctx.artifacts, "http://127.0.0.1:0")
            self.services = BootServices(svc, tftp_bind=self._binds[0], http_bind=self._binds[1],
                                         boot_files=boot_files).start()
            svc.http_base = f"http://{self.services.http.host}:{self.services.http.port}"
        if self.services is not None:
            self._tftp = (self.services.tftp.host, self.services.tftp.port)
            self._http_base = self.services.service.http_base
        spec = self.ctx.spec
        macs = {n.name: n.macs[0] for _, n in spec.nodes()}
        fw_type = {n.name: n.firmware for _, n in spec.nodes()}
        models = {n.name: n.model for _, n in spec.nodes()}
        ipmi = [n for n in self.nodes if n["driver"] != "redfish"]
        redfish = [n for n in self.nodes if n["driver"] == "redfish"]
        self.site = LabSites([
            SimSite(ipmi, state_path=self.dir / "bmc-state.json", activation_s=self.activation_s,
                    hook_workers=8) if ipmi else None,
            RedfishSite(redfish, state_path=self.dir / "redfish-state.json", cert_dir=self.dir,
                        activation_s=self.activation_s, hook_workers=8) if redfish else None])
        if redfish:
            self._publish_ca({n["credentials"] for n in redfish})
        self.host = NetbootHost(self.site, macs=macs, firmware_type=fw_type, tftp=self._tftp,
                                http_base=self._http_base, disk_dir=self.dir / "disks", models=models,
                                boot_loop=self._load_boot_loop(), flash_seconds=self.flash_seconds)
        self.site.on_power_on = self.host.on_power_on
        self.site.start(timeout=30)
        return self

    def _publish_ca(self, credentials: set[str]) -> None:
        """Let the drivers trust the lab's Redfish BMCs: its CA where Context.ca_bundle looks."""
        from provisioner.lab.redfish_tls import ensure_ca

        ca = ensure_ca(self.dir)[0].read_bytes()
        secrets_dir = self.ctx.settings.data_dir / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True)
        for name in credentials:
            if not self.ctx.spec.inventory.credentials[name].ca_bundle:
                (secrets_dir / f"{name}.ca.pem").write_bytes(ca)

    def stop(self) -> None:
        if self.site:
            self.site.stop()
        if self.host:
            self.host.close()
        if self.services is not None and self._serve:
            self.services.stop()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults -------------------------------------------------------------------------------
    def _load_boot_loop(self) -> set[tuple[str, str]]:
        p = self.dir / "boot-loop.json"
        return {tuple(x) for x in json.loads(p.read_text())} if p.exists() else set()

    def set_boot_loop(self, component: str, version: str, on: bool = True) -> None:
        """Servers running `component` at `version` never finish POST (kept across restarts)."""
        if on:
            self.host.boot_loop.add((component, version))
        else:
            self.host.boot_loop.discard((component, version))
        (self.dir / "boot-loop.json").write_text(json.dumps(sorted(self.host.boot_loop)))

    # -- status -------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        out = []
        for n in self.nodes:
            st = self.site.state(n["name"])
            out.append({"name": n["name"], "model": n["model"], "driver": n["driver"], "bmc_address": n["bmc_address"],
                        "bmc_port": n["bmc_port"], "username": n["username"], "password": shown_password(n),
                        "power": st["power"], "boots": st.get("boots", 0),
                        "firmware": {c: fw["active"] for c, fw in st["firmware"].items()},
                        "installed_release": self.host.installed_release(n["name"]),
                        "faults": {k: v for k, v in st.get("faults", {}).items() if v and k != "outage_s"}})
        return out


def _ensure_stand_in_loaders(boot_files: Path) -> None:
    """Without Debian's ipxe package, serve marked stand-ins so the lab still exercises TFTP."""
    for name in ("undionly.kpxe", "snponly.efi"):
        p = boot_files / name
        if not p.exists():
            log.warning("lab.boot_files missing=%s: Debian's ipxe is not installed; serving a stand-in", name)
            p.write_bytes(b"STAND-IN " + name.encode() + b" " * 65536)
