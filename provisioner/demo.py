"""`make demo`: the main job end to end on the embedded default (SQLite + a simulated site).

A simulated site (two production racks and a staging rack, BMCs on real IPMI, hosts that really
netboot against our TFTP and HTTP servers) runs in this process. The demo releases the example
spec, proves it on staging, gets it approved, rolls it out to production, then plays the incident:
a new release raises a BIOS to a version that boot-loops; the staging canary never comes back;
the rollout halts by itself; the operator blocks the version and rolls back; a hand-flashed node
is found as drift and re-provisioned; every node ends at its pins.

Everything is kept in .provisioner-demo/ so `provisioner --data .provisioner-demo history` shows
it all afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.rule import Rule
from rich.table import Table

from provisioner.cli import main as cli
from provisioner.cli.output import console
from provisioner.context import Context, Settings
from provisioner.operations import nodes

REPO = Path(__file__).resolve().parent.parent
BAD_MODEL, BAD_COMPONENT, BAD_VERSION = "dl360g10", "bios", "2.90.0"
PASSWORDS = {"alice": "alice-demo-pass", "bob": "bob-demo-pass", "carol": "carol-demo-pass",
             "watch": "watch-demo-pass"}  # demo only
timeline: list[tuple[float, str]] = []
T0 = time.monotonic()


def mark(what: str) -> None:
    timeline.append((time.monotonic() - T0, what))


def say(title: str) -> None:
    console.print(Rule(f"[bold]{title}"))
    mark(title)


def run(*args: str, spec: Path, data: Path, ok=(0,), stdin: str | None = None,
        token: str | None = None, remote: bool = False) -> int:
    """One `provisioner` command, in process; `stdin` is what is piped in, `token` PROVISIONER_TOKEN;
    `remote`: a workstation signed in to the operator API (`provisioner login`), not the server host,
    where commands act as the installation's root (direct store access)."""
    server = os.environ.get("PROVISIONER_SERVER") if remote else None
    prefix = (f"PROVISIONER_SERVER={server} " if server else "") + ("PROVISIONER_TOKEN=prv_… " if token else "")
    piped = "echo *** | " if stdin is not None else ""
    console.print(f"[dim]$ {piped}{prefix}provisioner {' '.join(args)}[/dim]")
    saved = sys.stdin, os.environ.get("PROVISIONER_TOKEN"), os.environ.get("PROVISIONER_SERVER")
    if stdin is not None:
        sys.stdin = io.StringIO(stdin + "\n")
    if token:
        os.environ["PROVISIONER_TOKEN"] = token
    if not remote:  # the server host's store, even if whoever runs the demo is signed in somewhere
        os.environ["PROVISIONER_SERVER"] = "local"
    try:
        code = cli([*(() if remote else ("--spec", str(spec), "--data", str(data))), *args])
    finally:
        sys.stdin = saved[0]
        for name, value in (("PROVISIONER_TOKEN", saved[1]), ("PROVISIONER_SERVER", saved[2])):
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    if code not in ok:
        raise SystemExit(f"demo step failed: provisioner {' '.join(args)} exited {code}")
    return code


def release_id(data: Path, spec: Path) -> str:
    ctx = Context(Settings(spec_dir=spec, data_dir=data))
    return ctx.store.list_releases()[-1]["id"]


def bump_bios(src: Path, dest: Path, model: str = BAD_MODEL, version: str = BAD_VERSION,
              component: str = BAD_COMPONENT) -> None:
    """What an operator commits: a copy of the spec whose manifest pins the new BIOS, image and digest."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in ("inventory.yaml", "policy.yaml", "deny-list.yaml", "boot_profiles.yaml", "firmware_manifests",
                 "templates", "artifacts"):
        (shutil.copytree if (src / item).is_dir() else shutil.copy2)(src / item, dest / item)
    manifest = dest / "firmware_manifests" / f"{model}.yaml"
    text = manifest.read_text()
    image = f"artifacts/firmware/{model}/{component}-{version}.bin"
    data = (dest / image).read_bytes()
    block = re.search(rf"  - name: {component}\n(?:    .*\n)+", text).group(0)
    new = re.sub(r'version: "[^"]+"', f'version: "{version}"', block)
    new = re.sub(r"file: .*", f"file: {image}", new)
    new = re.sub(r"sha256: .*", f"sha256: {hashlib.sha256(data).hexdigest()}", new)
    new = re.sub(r"size: .*", f"size: {len(data)}", new)
    manifest.write_text(text.replace(block, new))


@contextlib.contextmanager
def operator_api(ctx: Context):
    """`provisioner api` on a free loopback port, in this process; the demo's logins kept in its data dir."""
    from provisioner.api.operator import OperatorDeps, create_operator_app
    from provisioner.api.operator.server import OperatorServer

    deps = OperatorDeps(ctx, secure_cookie=False)  # plain HTTP on loopback: the demo has no certificate
    server = OperatorServer(create_operator_app(deps), "127.0.0.1", 0, threads=8).start()
    saved = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(ctx.settings.data_dir / "config")
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        deps.workers.shutdown(wait=True)
        os.environ.pop("XDG_CONFIG_HOME", None)
        if saved is not None:
            os.environ["XDG_CONFIG_HOME"] = saved


def wait_soak(seconds: float) -> None:
    with Progress(TextColumn("soaking on staging"), BarColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("soak", total=seconds)
        start = time.monotonic()
        while (left := seconds - (time.monotonic() - start)) > 0:
            time.sleep(min(0.2, left))
            bar.update(task, completed=seconds - max(left, 0))


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    data = REPO / ".provisioner-demo"
    if data.exists():
        shutil.rmtree(data)
    spec = REPO
    ctx = Context(Settings(spec_dir=spec, data_dir=data))

    say("1. Accounts, and the spec frozen into a release by one of them")
    # the server host's admin creates the accounts (passwords hashed, argon2id); direct store access is root
    for name in ("alice", "bob", "carol"):
        run("user", "add", name, "--role", "approver", "--password-stdin", spec=spec, data=data,
            stdin=PASSWORDS[name])
    alice_token, _ = ctx.store.accounts.create_token("alice", "demo", ctx.actor, days=1)  # shown once
    run("validate", spec=spec, data=data)
    run("release", "build", spec=spec, data=data, token=alice_token)  # alice is its author
    r1 = release_id(data, spec)

    say("2. A simulated site: 20 BMCs on real IPMI and Redfish, hosts that netboot over our TFTP and HTTP")
    from provisioner.lab.site import Lab

    try:
        lab = Lab(ctx).start()
    except OSError as e:
        console.print(f"[red]error: the simulated site cannot start: {e}[/red]\n"
                      "Is another lab using the example's BMC addresses? Stop it with `provisioner lab down`.")
        return 1
    try:
        by = {d: [n for n in lab.nodes if n["driver"] == d] for d in ("ipmi", "redfish")}
        console.print(f"lab up: {len(by['ipmi'])} IPMI BMCs (r650, UDP 127.0.x.y:6230) and {len(by['redfish'])} "
                      f"Redfish BMCs (dl360g10, HTTPS 127.0.x.y:8443) answering; TFTP {lab._tftp[0]}:{lab._tftp[1]}, "
                      f"HTTP {lab._http_base}")
        console_server = _console(ctx)
        try:
            return _story(ctx, lab, spec, data, r1)
        finally:
            console_server.stop()
    finally:
        lab.stop()


def _console(ctx: Context):
    """The web console on loopback (plain HTTP: cookies not Secure), to watch the rollouts live."""
    from provisioner.console.app import ConsoleServer, create_console_app
    from provisioner.console.session import SessionPolicy

    ctx.store.accounts.add("watch", "viewer", ctx.actor, password=PASSWORDS["watch"])
    server = ConsoleServer(create_console_app(ctx, policy=SessionPolicy(secure=False))).start()
    console.print(f"web console: [bold]{server.url}[/bold] — sign in as watch / {PASSWORDS['watch']} (a viewer) "
                  "to follow the rollouts live")
    return server


def _story(ctx: Context, lab, spec: Path, data: Path, r1: str) -> int:
    say("3. Prove the release on staging")
    run("promote", r1[:12], "--to", "staging", spec=spec, data=data)
    run("apply", "staging", spec=spec, data=data)
    run("gate", r1[:12], spec=spec, data=data, ok=(1,))
    carol_token, _ = ctx.store.accounts.create_token("carol", "demo", ctx.actor, days=1)  # shown once
    # approvals are an authenticated account's (here: alice's password, checked); the author cannot
    # approve, under any spelling of her name, and the refusal is audited
    run("approve", r1[:12], "--account", "alice", "--password-stdin", spec=spec, data=data, stdin=PASSWORDS["alice"],
        ok=(3,))
    # The approvers work from their own machines, through the operator API (`provisioner api`)
    with operator_api(ctx) as url:
        console.print(f"[dim]operator API on {url} (provisioner api)[/dim]")
        run("login", "--server", url, "--user", "bob", "--password-stdin", spec=spec, data=data,
            stdin=PASSWORDS["bob"], remote=True)
        run("approve", r1[:12], "--comment", "staging clean", spec=spec, data=data, remote=True)
        run("approve", r1[:12], spec=spec, data=data, remote=True)  # the same account again: counts once
        run("logout", spec=spec, data=data, remote=True)
        os.environ["PROVISIONER_SERVER"] = url  # carol: a personal API token instead of a password
        try:
            run("approve", r1[:12], spec=spec, data=data, token=carol_token, remote=True)
        finally:
            os.environ.pop("PROVISIONER_SERVER", None)
    wait_soak(ctx.spec.policy.staging_gate.soak_seconds + 0.5)
    run("gate", r1[:12], spec=spec, data=data)

    say("4. Roll it out to production: canary, then waves, at most 2 nodes per rack down")
    run("promote", r1[:12], "--to", "production", spec=spec, data=data)
    run("plan", "production", spec=spec, data=data, ok=(2,))
    run("apply", "production", "--yes", spec=spec, data=data)  # production is protected: --yes off a terminal

    say(f"5. The incident: a new release raises {BAD_MODEL} BIOS to {BAD_VERSION}, which boot-loops")
    lab.set_boot_loop(BAD_COMPONENT, BAD_VERSION)
    spec2 = data / "spec-v2"
    bump_bios(spec, spec2)
    run("release", "build", spec=spec2, data=data)
    r2 = release_id(data, spec2)
    run("release", "diff", r1[:12], r2[:12], spec=spec2, data=data)
    run("promote", r2[:12], "--to", "staging", spec=spec2, data=data)
    run("apply", "staging", spec=spec2, data=data, ok=(8,))  # the canary never comes back: halt

    say("6. On call: block the version everywhere, roll staging back")
    run("block", BAD_COMPONENT, BAD_VERSION, "--reason", "boot loop after flash, INC-4411", "--incident", "INC-4411",
        spec=spec2, data=data)
    run("release", "build", spec=spec2, data=data, ok=(3,))  # nothing pinning it can be built any more
    run("rollback", "staging", spec=spec, data=data)

    say("7. Drift: someone hand-flashed a production NIC")
    lab.site.hand_flash("r2n05", "nic", "14.30.0")
    run("drift", spec=spec, data=data, ok=(2,))  # reports only: nothing is touched
    run("drift", "production", "--fix", "--yes", spec=spec, data=data)

    say("8. Every node at its pinned versions")
    rows = nodes.compliance(ctx)
    t = Table(title="compliance", header_style="bold")
    for col in ("node", "env", "model", "driver", "bmc", "bios", "nic", "raid", "release", "ok"):
        t.add_column(col)
    for r in rows:
        comps = r["components"]
        t.add_row(r["node"], r["environment"], r["model"], ctx.spec.node(r["node"]).bmc.driver, *[comps[c]["observed"] or "-" for c in ("bmc", "bios", "nic", "raid")],
                  (r["node_release"] or "-")[:12], "[green]✓[/green]" if r["compliant"] else "[red]✗[/red]")
    console.print(t)
    compliant = sum(r["compliant"] for r in rows)
    run("audit", "verify", spec=spec, data=data)

    say("Timeline")
    for at, what in timeline:
        console.print(f"  {at:6.1f}s  {what}")
    console.print(f"\n{compliant}/{len(rows)} nodes compliant. Everything above is in the store: "
                  f"[bold]provisioner --data {data.relative_to(REPO)} history[/bold]")
    return 0 if compliant == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
