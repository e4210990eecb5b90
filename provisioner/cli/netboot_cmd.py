"""`provisioner serve`, `provisioner dhcp render`, `provisioner netboot decide`."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option
from provisioner.cli.remote import on_this_host
from provisioner.context import Context


def boot_service(ctx: Context, http_base: str, retention=None):
    from provisioner.netboot.service import BootService

    ctx.store.sync_nodes(ctx.spec)
    return BootService(ctx.store, ctx.artifacts, http_base, retention=retention)


@on_this_host("the boot services served from here")
@cli.command()
@click.option("--tftp-bind", default="0.0.0.0:69", show_default=True, help="TFTP address:port, or 'off'.")
@click.option("--http-bind", default="0.0.0.0:8080", show_default=True, help="HTTP address:port, or 'off'.")
@click.option("--boot-files", type=click.Path(path_type=Path), default=None,
              help="Bootloaders served by relative path [default: DATA/boot-files].")
@click.option("--public-url", default=None,
              help="Base URL nodes use to reach the HTTP server [default: http://<http-bind>].")
@click.option("--http-workers", type=click.IntRange(0, 64), default=min(os.cpu_count() or 1, 8),
              show_default="one per core",
              help="HTTP worker processes (gunicorn); 0 serves HTTP from this process (cheroot).")
@click.option("--http-threads", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Threads per HTTP worker.")
@click.option("--keep-boots", type=click.IntRange(0, 3650), default=7, show_default=True,
              help="Days a closed boot (and its token) is kept.")
@click.option("--keep-events", type=click.IntRange(0, 3650), default=90, show_default=True,
              help="Days a node event is kept.")
@click.option("-v", "--verbose", is_flag=True, help="Log every decision and transfer.")
@click.option("--log-format", type=click.Choice(["text", "json"]), envvar="PROVISIONER_LOG_FORMAT", default="text",
              show_default=True, help="json: one object per line with stable keys (ts, level, logger, event, ...).")
@click.option("--metrics-bind", default=None, metavar="ADDRESS:PORT",
              help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics [default: off].")
@click.pass_obj
def serve(ctx: Context, tftp_bind: str, http_bind: str, boot_files: Path | None, public_url: str | None,
          http_workers: int, http_threads: int, keep_boots: int, keep_events: int, verbose: bool,
          log_format: str, metrics_bind: str | None):
    """Run the site's boot services until interrupted (SIGINT/SIGTERM stop them cleanly).

    \b
    TFTP hands out the bootloaders (Debian's iPXE and pxelinux are copied into the boot-files
    directory when present) and per-node configs: pxelinux.cfg/01-<mac>, grub.cfg-01-<mac>,
    boot-<mac>.ipxe. HTTP serves per-node iPXE scripts, artifacts by sha256 and node callbacks.
    What a node gets is decided by the netboot gate from its environment's release, its state
    and the deny-list.

    \b
    Examples:
      sudo provisioner serve                                 # ports 69 and 8080 on all addresses
      provisioner serve --tftp-bind 127.0.0.1:6969 --http-bind 127.0.0.1:8080
      provisioner serve --tftp-bind off --public-url http://10.0.0.1:8080
      provisioner serve --http-workers 4                     # a bigger boot server: 4 HTTP processes
    """
    from provisioner.cli import logging_asked
    from provisioner.netboot.dhcp import populate_boot_files
    from provisioner.observability import logs, metrics
    from provisioner.serve.binds import parse_bind
    from provisioner.serve.http_pool import HttpPool
    from provisioner.serve.services import BootServices
    from provisioner.store.boots import Retention

    if verbose or not logging_asked():  # a server logs its warnings unless --log said otherwise
        logs.configure(log_format, logging.INFO if verbose else logging.WARNING)
    elif log_format:
        logs.configure(log_format, logging.getLogger().level)
    metrics_dir = metrics_server = None
    if metrics_bind:  # before the HTTP pool starts: its workers inherit where to write their samples
        metrics_dir = Path(tempfile.mkdtemp(prefix="provisioner-metrics-"))
        metrics.enable(metrics_dir)
        try:
            metrics_server = metrics.serve_exposition(*parse_bind(metrics_bind, 9108))
        except OSError as e:
            raise click.ClickException(f"cannot serve metrics on {metrics_bind}: {e.strerror or e}") from None
    tftp = None if tftp_bind == "off" else tftp_bind
    http = None if http_bind == "off" else http_bind
    boot_files = boot_files or ctx.settings.data_dir / "boot-files"
    if tftp:
        populate_boot_files(boot_files)
    base = public_url or f"http://{http_bind if http else '127.0.0.1:8080'}"
    retention = Retention(closed_boots=timedelta(days=keep_boots), node_events=timedelta(days=keep_events))
    svc = boot_service(ctx, base, retention)
    pool = None
    if http and http_workers:
        pool = HttpPool(*parse_bind(http, 8080), spec_dir=ctx.settings.spec_dir, data_dir=ctx.settings.data_dir,
                        db_url=ctx.settings.db_url, http_base=public_url, workers=http_workers,
                        threads=http_threads, verbose=verbose, retention=retention)
    try:
        services = BootServices(svc, tftp_bind=tftp, http_bind=http, boot_files=boot_files,
                                http_server=pool).start()
    except PermissionError:
        raise click.ClickException("cannot bind a port below 1024: run as root, grant CAP_NET_BIND_SERVICE, "
                                   "or use --tftp-bind/--http-bind with high ports") from None
    except OSError as e:
        raise click.ClickException(f"cannot start the boot services: {e}") from None
    if public_url is None and http:
        svc.http_base = f"http://{services.http.host}:{services.http.port}"
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parts = []
    if services.tftp:
        parts.append(f"TFTP {services.tftp.host}:{services.tftp.port} (boot files {boot_files})")
    if services.http:
        procs = f"{http_workers} worker processes, " if pool else ""
        parts.append(f"HTTP {services.http.host}:{services.http.port} ({procs}nodes use {svc.http_base})")
    if metrics_server:
        parts.append(f"metrics http://{metrics_server.server_address[0]}:{metrics_server.server_port}/metrics")
    console.print("serving " + "; ".join(parts) + " — Ctrl-C to stop", highlight=False)
    stop.wait()
    services.stop()
    if metrics_server:
        metrics_server.shutdown()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    console.print("stopped")


serve.prints_no_data = True


@on_this_host("dnsmasq on this host")
@cli.group()
def dhcp():
    """DHCP for PXE clients (dnsmasq configuration)."""


def _checked(parse):
    """A click callback running one of dhcp.py's parsers: its ValueError names what to write instead."""
    def callback(_ctx, _param, value):
        if value is None:
            return None
        try:
            return str(parse(value))
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return callback


def _parse_server_ip(v):
    from provisioner.netboot.dhcp import parse_server_ip
    return parse_server_ip(v)


def _parse_interface(v):
    from provisioner.netboot.dhcp import parse_interface
    return parse_interface(v)


@dhcp.command("render")
@click.option("--server-ip", required=True, callback=_checked(_parse_server_ip),
              help="IPv4 address of the TFTP/HTTP server, as nodes see it.")
@click.option("--interface", required=True, callback=_checked(_parse_interface), help="Interface dnsmasq serves.")
@click.option("--mode", type=click.Choice(["reservation", "proxy"]), default="reservation", show_default=True,
              help="reservation: leases only for inventory MACs; proxy: boot options beside another DHCP server.")
@click.option("--range", "dhcp_range", default=None, help="Lease range START,END (reservation) or subnet (proxy).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--environment", "environments", multiple=True, help="Only nodes of this environment (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write here instead of stdout.")
@click.pass_obj
def dhcp_render(ctx: Context, server_ip, interface, mode, dhcp_range, http_port, environments, output):
    """Write a dnsmasq configuration for the site.

    \b
    BIOS clients get undionly.kpxe, UEFI clients snponly.efi; once iPXE runs it is sent to the
    HTTP bootstrap script, which chains to the per-node script from the netboot gate.

    \b
    Examples:
      provisioner dhcp render --server-ip 10.0.0.1 --interface eth1 -o /etc/dnsmasq.d/pxe.conf
      provisioner dhcp render --server-ip 10.0.0.1 --interface eth1 --mode proxy --range 10.0.0.0/24
    """
    from provisioner.netboot.dhcp import parse_range, parse_server_ip, render_dnsmasq

    if dhcp_range is not None:
        try:
            dhcp_range = parse_range(dhcp_range, mode=mode, server_ip=parse_server_ip(server_ip))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--range'") from None
    unknown = sorted(set(environments) - set(ctx.spec.policy.environments))
    if unknown:
        raise click.BadParameter(f"unknown environment {unknown[0]!r}; expected one of "
                                 f"{', '.join(ctx.spec.policy.environments)}", param_hint="'--environment'")
    try:
        text = render_dnsmasq(ctx.spec, server_ip=server_ip, interface=interface, http_port=http_port, mode=mode,
                              dhcp_range=dhcp_range, environments=list(environments) or None)
    except ValueError as e:  # every option is checked above; this is render_dnsmasq's own guard
        raise click.UsageError(str(e)) from None
    if output:
        output.write_text(text)
        console.print(f"wrote {output}")
    else:
        click.echo(text, nl=False)


dhcp_render.prints_no_data = True


@on_this_host("the spec and store of --spec/--data here")
@cli.group()
def netboot():
    """Inspect what the netboot gate hands a node."""


@netboot.command("decide")
@click.argument("mac")
@json_option
@click.pass_obj
def netboot_decide(ctx: Context, mac: str):
    """Show the gate's decision for MAC without booting anything.

    \b
    Example:
      provisioner netboot decide 52:54:00:0a:01:01
    """
    from provisioner.netboot.service import normalize_mac

    svc = boot_service(ctx, "http://preview")
    norm = normalize_mac(mac)
    if norm is None:
        raise click.BadParameter(f"{mac!r} is not a MAC address")
    d, node, _ = svc.decide(norm)
    data = {**asdict(d), "mac": norm}

    def render(x):
        console.print(f"{x['mac']} → {x['node'] or 'unknown'}: [bold]{x['action']}[/bold] — {x['reason']}")
        for c in x["components"]:
            console.print(f"  flash {c['name']} {c['from_version']} → {c['version']}")

    return data, render
