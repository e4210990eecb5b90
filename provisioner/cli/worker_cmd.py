"""`provisioner worker`: run rollouts from the store, beside any number of other workers."""

from __future__ import annotations

import logging
import signal

import click

from provisioner.cli import cli
from provisioner.cli.output import console, err_console
from provisioner.cli.remote import on_this_host
from provisioner.context import Context


@on_this_host("a rollout worker on the store of --data/--db here")
@cli.command()
@click.option("--slots", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Nodes this worker runs at once (the rollout's policy still limits the total).")
@click.option("--poll", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between looks for work.")
@click.option("--lease-seconds", type=click.FloatRange(1, 3600), default=None, envvar="PROVISIONER_LEASE_SECONDS",
              help="A node of a worker that stopped renewing is taken over this long after [default: 15].")
@click.option("-v", "--verbose", is_flag=True, help="Log every claim and takeover.")
@click.option("--log-format", type=click.Choice(["text", "json"]), envvar="PROVISIONER_LOG_FORMAT", default="text",
              show_default=True, help="json: one object per line with stable keys (ts, level, logger, event, ...).")
@click.option("--metrics-bind", default=None, metavar="ADDRESS:PORT",
              help="Serve Prometheus metrics (rollout progress, lease takeovers) at http://ADDRESS:PORT/metrics.")
@click.pass_obj
def worker(ctx: Context, slots: int, poll: float, lease_seconds: float | None, verbose: bool, log_format: str,
           metrics_bind: str | None):
    """Run the rollouts recorded in the store until stopped (SIGINT/SIGTERM: running nodes end first).

    \b
    Any number of workers, on any hosts, share one store (PostgreSQL for more than one host):
    each claims node operations through it, and the rollout's limits (canary first, waves, per
    rack, overall, one operation per BMC) hold over all of them. A node whose worker dies is
    taken over when its lease expires, from its record, reading the BMC before acting. While a
    worker is alive, `apply` hands its rollout over and follows it.
    Exit codes: 0 stopped; 75 this worker lost a lease (it was frozen or cut off from the store
    past its lease; it wrote nothing after) — restart it.

    \b
    Examples:
      provisioner --db postgresql://prov@db1/provisioner worker
      provisioner worker --slots 32 --log-format json --metrics-bind 127.0.0.1:9109
    """
    from provisioner.cli import logging_asked
    from provisioner.observability import logs, metrics
    from provisioner.rollout.worker import Worker
    from provisioner.serve.binds import parse_bind

    if verbose or not logging_asked():
        logs.configure(log_format, logging.INFO if verbose else logging.WARNING)
    elif log_format:
        logs.configure(log_format, logging.getLogger().level)
    server = None
    if metrics_bind:
        metrics.enable()
        try:
            server = metrics.serve_exposition(*parse_bind(metrics_bind, 9109))
        except OSError as e:
            raise click.ClickException(f"cannot serve metrics on {metrics_bind}: {e.strerror or e}") from None
    w = Worker(ctx, slots=slots, poll=poll, lease_seconds=lease_seconds,
               say=lambda text: err_console.print(text, highlight=False))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: w.stop())
    console.print(f"worker {w.leases.holder}: {slots} slot(s), lease {w.leases.seconds:.0f}s"
                  + (f", metrics http://{metrics_bind}/metrics" if server else "") + " — Ctrl-C to stop",
                  highlight=False)
    code = w.run()
    if server:
        server.shutdown()
    console.print("stopped")
    raise click.exceptions.Exit(code)


worker.prints_no_data = True
