"""A simulated site built from the inventory: BMCs (real IPMI on loopback), hosts that netboot,
and, unless told otherwise, the site's boot services — all in one process.

    lab = Lab(ctx).start()      # returns once every BMC answers
    lab.status()                # name, bmc_address, bmc_port, username, password, power, firmware
    lab.set_boot_loop("bios", "1.14.0")
    lab.stop()

State lives under DATA/lab/: bmc-state.json (power, boot device, firmware per node, kept across
restarts) and disks/<node>.json (what the installer wrote).
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

from provisioner.context import Context
from provisioner.lab.bmc import SimSite
from provisioner.lab.host import NetbootHost

log = logging.getLogger("provisioner.lab")

# What a new lab server runs before the pipeline has touched it: the pins, except these
# "factory" versions, so the first rollout has real work to do.
FACTORY = {
    "r650": {"bmc": "7.00.60"},
    "dl360g10": {"nic": "14.30.0"},
}


def ensure_lab_secret(ctx: Context, credentials: str) -> str:
    """The lab's BMC password: the credentials' env var if set, else DATA/secrets/<name> (created)."""
    import os

    cred = ctx.spec.inventory.credentials[credentials]
    if cred.password_env and os.environ.get(cred.password_env):
        return os.environ[cred.password_env]
    path = ctx.settings.data_dir / "secrets" / credentials
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(12) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def lab_nodes(ctx: Context) -> list[dict]:
    spec = ctx.spec
    nodes = []
    for _rack, n in spec.nodes():
        pins = {c.name: c.version for c in spec.manifests[n.model].components}
        username = spec.inventory.credentials[n.bmc.credentials].username
        nodes.append({"name": n.name, "model": n.model, "bmc_address": n.bmc.address, "bmc_port": n.bmc.port,
                      "username": username, "password": ensure_lab_secret(ctx, n.bmc.credentials),
                      "firmware": {**pins, **FACTORY.get(n.model, {})}, "power": "on"})
    return nodes


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
        self.site: SimSite | None = None
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
        self.site = SimSite(self.nodes, state_path=self.dir / "bmc-state.json", activation_s=self.activation_s,
                            hook_workers=8)
        self.host = NetbootHost(self.site, macs=macs, firmware_type=fw_type, tftp=self._tftp,
                                http_base=self._http_base, disk_dir=self.dir / "disks", models=models,
                                boot_loop=self._load_boot_loop(), flash_seconds=self.flash_seconds)
        self.site.on_power_on = self.host.on_power_on
        self.site.start(timeout=30)
        return self

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
            out.append({"name": n["name"], "model": n["model"], "bmc_address": n["bmc_address"],
                        "bmc_port": n["bmc_port"], "username": n["username"], "password": n["password"],
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
