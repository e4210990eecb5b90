"""`provisioner lab up|down|status|fault`: a simulated site from the inventory, in the background."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import on_this_host
from provisioner.context import Context
from provisioner.spec.suggest import did_you_mean


@on_this_host("the simulated lab runs here")
@cli.group()
def lab():
    """A simulated site: BMCs speaking real IPMI or Redfish on loopback, hosts that really netboot.

    \b
    Examples:
      provisioner lab up             # every inventory node; returns once every BMC answers
      provisioner lab status --json  # name, bmc_address, bmc_port, username, password, power, firmware
                                     # (password: the lab's generated one; null when set by env)
      provisioner lab fault --boot-loop bios=1.14.0
      provisioner lab down
    """


def _info(ctx: Context) -> dict | None:
    p = ctx.settings.data_dir / "lab" / "lab.json"
    try:
        info = json.loads(p.read_text())
    except FileNotFoundError:  # none running, or the lab removed it as it stopped (`lab down` polls this)
        return None
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        p.unlink(missing_ok=True)  # left by a lab that was killed
        return None
    return info


@lab.command("up")
@click.option("--tftp-bind", default="127.0.0.1:0", show_default=True, help="The lab's TFTP server (port 0: any free).")
@click.option("--http-bind", default="127.0.0.1:0", show_default=True, help="The lab's HTTP server.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for every BMC to answer.")
@json_option
@click.pass_obj
def lab_up(ctx: Context, tftp_bind: str, http_bind: str, timeout: float):
    """Start the simulated site in the background (with its boot services); state survives restarts."""
    info = _info(ctx)
    if info is None:
        ctx.spec  # noqa: B018  (a broken spec is reported here, not in the child)
        log = ctx.settings.data_dir / "lab" / "lab.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "provisioner.lab.run", "--spec", str(ctx.settings.spec_dir),
               "--data", str(ctx.settings.data_dir), "--tftp-bind", tftp_bind, "--http-bind", http_bind]
        if ctx.settings.db_url:
            cmd += ["--db", ctx.settings.db_url]
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while (info := _info(ctx)) is None:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise click.ClickException(f"the lab exited with code {proc.returncode}: {' | '.join(tail)}")
            if time.monotonic() > deadline:
                proc.terminate()
                raise click.ClickException(f"the lab did not come up within {timeout}s (see {log})")
            time.sleep(0.1)
    return info, lambda d: console.print(f"lab up: {d['nodes']} BMCs answering; TFTP {d['tftp'][0]}:{d['tftp'][1]}, "
                                         f"HTTP {d['http']} (pid {d['pid']})")


@lab.command("down")
@json_option
@click.pass_obj
def lab_down(ctx: Context):
    """Stop the simulated site (its firmware and disks are kept under DATA/lab)."""
    info = _info(ctx)
    if info is None:
        return {"stopped": False}, lambda d: console.print("no lab running")
    os.kill(info["pid"], signal.SIGTERM)
    for _ in range(100):
        if _info(ctx) is None:
            break
        time.sleep(0.1)
    return {"stopped": True, "pid": info["pid"]}, lambda d: console.print(f"lab stopped (pid {d['pid']})")


@lab.command("status")
@json_option
@click.pass_obj
def lab_status(ctx: Context):
    """Every simulated node: BMC address and lab credentials, power, firmware per component."""
    from provisioner.lab.run import control_call
    from provisioner.lab.site import lab_nodes, shown_password

    if _info(ctx):
        nodes = control_call(ctx.settings.data_dir, "status")
    else:  # not running: read what the last run left
        saved = {}
        for name in ("bmc-state.json", "redfish-state.json"):  # the IPMI and the Redfish BMCs
            state_file = ctx.settings.data_dir / "lab" / name
            saved.update(json.loads(state_file.read_text())["nodes"] if state_file.exists() else {})
        nodes = []
        for n in lab_nodes(ctx):
            st = saved.get(n["name"], {})
            fw = {c: v["active"] for c, v in st.get("firmware", {})
                  .items()} if st else n["firmware"]
            nodes.append({"name": n["name"], "model": n["model"], "driver": n["driver"], "bmc_address": n["bmc_address"],
                          "bmc_port": n["bmc_port"], "username": n["username"], "password": shown_password(n),
                          "power": st.get("power", "off") if st else "off", "firmware": fw, "running": False})

    def render(d):
        table("lab", ["node", "driver", "bmc", "power", "firmware"],
              [[n["name"], n.get("driver", "ipmi"), f"{n['bmc_address']}:{n['bmc_port']}", n["power"],
                " ".join(f"{k}={v}" for k, v in n["firmware"].items())] for n in d])

    return nodes, render


def _node_name(ctx: Context, name: str) -> str:
    names = [n.name for _, n in ctx.spec.nodes()]
    if name not in names:
        raise click.BadParameter(f"no node {name!r} in the inventory{did_you_mean(name, names)}",
                                 param_hint="'--node'")
    return name


def _component_version(ctx: Context, text: str, option: str) -> tuple[str, str]:
    """COMPONENT=VERSION, both given, the component one that some manifest pins."""
    comp, sep, ver = text.partition("=")
    comp, ver = comp.strip(), ver.strip()
    if not sep or not comp or not ver:
        raise click.BadParameter(f"{text!r} is not COMPONENT=VERSION; expected e.g. bios=1.14.0", param_hint=option)
    known = sorted({c.name for m in ctx.spec.manifests.values() for c in m.components})
    if comp not in known:
        raise click.BadParameter(f"no manifest has a component {comp!r}{did_you_mean(comp, known)}",
                                 param_hint=option)
    return comp, ver


def _fault_words(faults: dict) -> str:
    words = {"unreachable": lambda v: "unreachable" if v else "reachable again",
             "delay_s": lambda v: f"replies delayed {v:g} s",
             "loss": lambda v: f"{v:.0%} of IPMI packets dropped",
             "wrong_password": lambda v: "refuses the password" if v else "accepts the password",
             "task_fails": lambda v: "its next update task fails",
             "power_loss_in_update": lambda v: "loses power during its next update"}
    return ", ".join(words[k](v) for k, v in faults.items())


@lab.command("fault")
@click.option("--node", default=None, help="The node to fault (for every option but --boot-loop).")
@click.option("--boot-loop", "boot_loop", default=None, metavar="COMPONENT=VERSION",
              help="Servers running this version never finish POST.")
@click.option("--unreachable/--reachable", default=None)
@click.option("--slow", type=click.FloatRange(0, 3600), default=None, help="Delay every BMC reply by this many seconds.")
@click.option("--loss", type=click.FloatRange(0, 1), default=None, help="IPMI: drop this share of packets (0..1).")
@click.option("--wrong-password", is_flag=True, default=None)
@click.option("--task-fails", is_flag=True, default=None, help="Redfish: NODE's next update task fails (once).")
@click.option("--power-loss-mid-update", is_flag=True, default=None,
              help="Redfish: NODE's BMC loses power while applying its next update (once).")
@click.option("--hand-flash", default=None, metavar="COMPONENT=VERSION", help="Flash NODE by hand (drift).")
@click.option("--clear", is_flag=True, help="Clear NODE's (or every node's) BMC faults.")
@json_option
@click.pass_obj
def lab_fault(ctx: Context, node, boot_loop, unreachable, slow, loss, wrong_password, task_fails,
              power_loss_mid_update, hand_flash, clear):
    """Inject faults into the running lab.

    \b
    Examples:
      provisioner lab fault --boot-loop bios=1.14.0
      provisioner lab fault --node r1n03 --unreachable
      provisioner lab fault --node r2n05 --hand-flash nic=14.30.0
      provisioner lab fault --node r2n03 --task-fails          # a Redfish BMC
    """
    from provisioner.lab.run import control_call

    # Every option is checked against the spec before the lab is asked anything.
    faults = {k: v for k, v in {"unreachable": unreachable, "delay_s": slow, "loss": loss,
                                "wrong_password": wrong_password, "task_fails": task_fails,
                                "power_loss_in_update": power_loss_mid_update}.items() if v is not None}
    if (faults or hand_flash) and not node:
        raise click.UsageError("--node is required for BMC faults and --hand-flash")
    if node is not None:
        node = _node_name(ctx, node)
    loop = _component_version(ctx, boot_loop, "'--boot-loop'") if boot_loop is not None else None
    flash = _component_version(ctx, hand_flash, "'--hand-flash'") if hand_flash is not None else None

    def call(op, **a):
        try:
            return control_call(ctx.settings.data_dir, op, **a)
        except (ConnectionError, ValueError) as e:
            raise click.ClickException(str(e)) from None

    done = []
    if loop:
        call("boot_loop", component=loop[0], version=loop[1])
        done.append(f"boot loop on {loop[0]} {loop[1]}")
    if faults:
        call("set_fault", node=node, **faults)
        done.append(f"{node}: {_fault_words(faults)}")
    if flash:
        call("hand_flash", node=node, component=flash[0], version=flash[1])
        done.append(f"{node}: {flash[0]} hand-flashed to {flash[1]}")
    if clear:
        call("clear_faults", node=node)
        done.append(f"cleared faults on {node or 'every node'}")
    return {"applied": done}, lambda d: console.print("\n".join(d["applied"]) or "nothing to do")
