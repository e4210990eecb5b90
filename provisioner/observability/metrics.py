"""Prometheus metrics of the services, off until `enable()`: a hook costs one `None` check when off.

Enabled by `serve --metrics-bind` (and, through PROMETHEUS_MULTIPROC_DIR, in the HTTP pool's
worker processes, which prometheus_client's multiprocess mode adds up at scrape time). Names:

  provisioner_boots_total{action,kind}                     boot configs handed out by the netboot gate
  provisioner_tftp_transfers_total{outcome}                done | aborted
  provisioner_tftp_errors_total{reason}                    requests refused or dropped, by first word of the reason
  provisioner_http_request_duration_seconds{route,status}  HTTP latency per Flask route
  provisioner_bmc_operations_total{driver,operation,outcome}   outcome: ok or the error class
  provisioner_rollout_nodes_total{result}                  done | failed | halted
  provisioner_rollout_steps_total{step}                    steps begun
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_m: SimpleNamespace | None = None


def enable(multiprocess_dir: Path | None = None) -> None:
    """Create the metrics. With `multiprocess_dir`, every process started after this (and this one)
    writes its samples there; it must be empty and must be set before prometheus_client is imported."""
    global _m
    if _m is not None:
        return
    if multiprocess_dir is not None:
        os.environ[MULTIPROC_ENV] = str(multiprocess_dir)
    import prometheus_client as pc

    _m = SimpleNamespace(
        boots=pc.Counter("provisioner_boots", "Boot configs handed to nodes by the netboot gate", ["action", "kind"]),
        tftp=pc.Counter("provisioner_tftp_transfers", "TFTP transfers that ended", ["outcome"]),
        tftp_errors=pc.Counter("provisioner_tftp_errors", "TFTP requests refused or dropped", ["reason"]),
        http=pc.Histogram("provisioner_http_request_duration_seconds", "HTTP request latency", ["route", "status"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)),
        bmc=pc.Counter("provisioner_bmc_operations", "BMC operations", ["driver", "operation", "outcome"]),
        rollout_nodes=pc.Counter("provisioner_rollout_nodes", "Nodes a rollout finished with", ["result"]),
        rollout_steps=pc.Counter("provisioner_rollout_steps", "Rollout steps begun", ["step"]),
        takeovers=pc.Counter("provisioner_lease_takeovers", "Leases taken over from a holder that stopped "
                             "renewing them (a worker killed or frozen mid-node)", ["kind"]),
        claims=pc.Counter("provisioner_worker_claims", "Node operations claimed by rollout workers", ["kind"]),
    )


def enable_from_env() -> None:
    """In a child process (the HTTP pool): enable if the parent did."""
    if os.environ.get(MULTIPROC_ENV):
        enable()


def serve_exposition(host: str, port: int):
    """The /metrics endpoint on host:port, in a thread; returns the server (`.shutdown()` stops it)."""
    import prometheus_client as pc
    from prometheus_client import multiprocess

    registry = pc.REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = pc.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    server, _thread = pc.start_http_server(port, addr=host, registry=registry)
    return server


# -- hooks (one line at each call site) --------------------------------------------------------------------
def boot(action: str, kind: str) -> None:
    if _m is not None:
        _m.boots.labels(action, kind).inc()


def tftp_transfer(outcome: str) -> None:
    if _m is not None:
        _m.tftp.labels(outcome).inc()


def tftp_error(reason: str) -> None:
    if _m is not None:
        _m.tftp_errors.labels(reason.split(" ", 1)[0].strip(":") or "unknown").inc()


@contextmanager
def bmc_operation(driver: str, what: str):
    if _m is None:
        yield
        return
    outcome = "ok"
    try:
        yield
    except Exception as e:
        outcome = type(e).__name__
        raise
    finally:
        _m.bmc.labels(driver, what.split(" ", 1)[0], outcome).inc()


def rollout_progress(event: dict) -> None:
    """Fed every rollout progress event (engine.py wraps its progress callback with this)."""
    if _m is None:
        return
    kind = event.get("event")
    if kind == "node_step":
        _m.rollout_steps.labels(event["step"]).inc()
    elif kind in ("node_done", "node_failed", "node_halted"):
        _m.rollout_nodes.labels(kind.removeprefix("node_")).inc()


def lease_takeover(kind: str) -> None:
    if _m is not None:
        _m.takeovers.labels(kind).inc()


def worker_claim(kind: str) -> None:
    if _m is not None:
        _m.claims.labels(kind).inc()


def instrument_flask(app) -> None:
    """Time every request of `app` per route (the rule, not the path: MACs would make a label per node)."""
    from flask import g, request

    @app.before_request
    def _start():
        g._metrics_t0 = time.perf_counter()

    @app.after_request
    def _observe(response):
        t0 = getattr(g, "_metrics_t0", None)
        if _m is not None and t0 is not None:
            rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            _m.http.labels(rule, str(response.status_code)).observe(time.perf_counter() - t0)
        return response


def observed_progress(progress):
    """A rollout progress callback that also feeds the metrics."""

    def feed(event: dict) -> None:
        rollout_progress(event)
        if progress is not None:
            progress(event)

    return feed
