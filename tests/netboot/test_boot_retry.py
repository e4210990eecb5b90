"""A boot whose download fails half-way asks the netboot gate again instead of giving up.

The rendered install script runs in the simulated host's iPXE interpreter against the real HTTP
routes (cheroot on loopback); the host drops its first artifact download as a flaky network would.
"""

from __future__ import annotations

from helpers import built_site, copy_spec, pinned

from provisioner.api.app import create_app
from provisioner.lab.host import BootFailed, Ipxe, NetbootHost
from provisioner.netboot.service import BootService
from provisioner.serve.services import HttpServer

MAC = "52:54:00:0a:01:01"


class FlakyHost(NetbootHost):
    def __init__(self, *a, drop: int, **kw):
        super().__init__(*a, **kw)
        self.drop, self.dropped = drop, []

    def _get(self, url, data=None, headers=None):
        if "/artifacts/" in url and len(self.dropped) < self.drop:
            self.dropped.append(url)
            raise BootFailed(f"GET {url}: connection reset by peer (injected)")
        return super()._get(url, data, headers)


def boot_with_dropped_downloads(tmp_path, drop: int):
    """r1n01 due an install; its host fetches its iPXE script over HTTP and runs it, the first
    `drop` artifact downloads failing. Returns (ctx, release, host, BootFailed or None)."""
    ctx, rel = built_site(copy_spec(tmp_path / "spec"), tmp_path / "data")
    ctx.store.update_node("r1n01", state="installing", observed=pinned(rel, "r650"))
    ctx.store.boots.expect("r1n01", "install", rel.id)  # as the rollout does before it power-cycles
    svc = BootService(ctx.store, ctx.artifacts, "http://127.0.0.1")
    http = HttpServer(create_app(svc), "127.0.0.1", 0).start()
    error = None
    try:
        svc.http_base = f"http://127.0.0.1:{http.port}"
        host = FlakyHost(site=None, macs={"r1n01": MAC}, firmware_type={"r1n01": "uefi"}, tftp=("127.0.0.1", 9),
                         http_base=svc.http_base, disk_dir=tmp_path / "disks", drop=drop)
        script = host._get(f"{svc.http_base}/boot/{MAC.replace(':', '-')}.ipxe").decode()
        try:
            Ipxe(host, "r1n01", MAC.replace(":", "-")).run(script)
        except BootFailed as e:
            error = e
    finally:
        http.stop()
    return ctx, rel, host, error


def test_a_failed_download_asks_the_gate_again_and_the_install_completes(tmp_path):
    ctx, rel, host, error = boot_with_dropped_downloads(tmp_path, drop=1)
    assert error is None and len(host.dropped) == 1
    events = [(e["source"], e["event"]) for e in ctx.store.node_events("r1n01")]
    # the retry asks the gate again and is handed the same boot's token: one boot, one install
    assert events.count(("netboot", "install")) == 1, events
    assert events[-1] == ("callback", "installed"), events
    assert host.installed_release("r1n01") == rel.id
    console = [e["text"] for e in host.journal if e["event"] == "console"]
    assert any("failed to start; asking the boot server again" in c for c in console), host.journal


def test_a_download_that_keeps_failing_ends_the_boot_without_a_report(tmp_path):
    """Nothing installs and nothing is reported as installed: the rollout's boot timeout decides."""
    ctx, rel, host, error = boot_with_dropped_downloads(tmp_path, drop=100)
    assert error is None  # the script ends with `exit 1` once re-chaining gives up
    assert len(host.dropped) >= 2  # it did ask again, more than once
    assert any(e["event"] == "ipxe_exit" for e in host.journal), host.journal
    assert host.installed_release("r1n01") is None
    assert ("callback", "installed") not in [(e["source"], e["event"]) for e in ctx.store.node_events("r1n01")]
