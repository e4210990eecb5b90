"""What a rollout prints, run here or followed from the operator API: progress, summary, exit code;
and the confirmation a protected environment asks for.

A rollout the API runs is followed through its event stream (SSE): `POST .../rollouts` answers
202 with the rollout's id and how it started (created, with its counts and unreadable BMCs; or
resumed); the steps then come from `/api/v1/rollouts/<id>/events` until `event: end`, and the
outcome per node from the rollout's record (`GET /api/v1/rollouts/<id>`), so the same
`RolloutResult`, summary and exit code as a local run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from provisioner.cli.output import console, err_console
from provisioner.cli.remote import Remote, quote
from provisioner.context import Context
from provisioner.errors import IncompleteRead, PolicyViolation, RolloutHalted
from provisioner.rollout.engine import RolloutResult
from provisioner.rollout.signals import EXIT_INTERRUPTED, SignalStop

ENV = click.argument("environment", default="production")


class RolloutProgress:
    """A progress bar for people (stderr), nothing for --json. It knows its total (the rollout's
    node count) and shows the step each running node is at."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar_enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.lines: list[str] = []
        self.phase: dict[str, str] = {}  # running node -> its current step

    def __call__(self, e: dict) -> None:
        ev = e["event"]
        if ev == "total" and self.bar is None and self.bar_enabled:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=err_console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("re-provisioning", total=e["nodes"], completed=e["done"])
        elif ev == "node_step":
            self.phase[e["node"]] = e["step"]
            self._describe()
        elif ev == "created":
            counts = ", ".join(f"{v} {k}" for k, v in sorted(e["counts"].items()))
            self._say(f"rollout {e['rollout']} created: {counts or 'nothing to do'}")
            for node, err in sorted(e.get("unreachable", {}).items()):
                self._say(f"  [yellow]{node}: BMC not read ({err})[/yellow]")
        elif ev == "resume":
            kind = f" ({e['kind']})" if e.get("kind") not in (None, "apply") else ""
            self._say(f"resuming rollout {e['rollout']}{kind} from its record")
        elif ev == "handoff":
            self._say(f"rollout {e['rollout']} handed to {e['workers']} worker(s); following it (Ctrl-C interrupts it)")
        elif ev == "wave":
            name = "canary" if e["wave"] == 0 else f"wave {e['wave']}"
            self._say(f"{name}: {', '.join(e['nodes'])}")
        elif ev == "node_done":
            self._advance(e["node"])
        elif ev == "node_failed":
            self._say(f"  [red]✗ {e['node']}: {e['error']}[/red]")
            self._advance(e["node"])
        elif ev == "node_halted":
            self._say(f"  [yellow]‖ {e['node']} stopped before {e['step']}[/yellow]")
            self.phase.pop(e["node"], None)
        elif ev in ("done", "halted", "interrupted", "lost"):
            if self.bar:
                self.bar.stop()

    def _describe(self) -> None:
        if self.bar:
            running = " ".join(f"{n}:{s}" for n, s in sorted(self.phase.items())[:4])
            more = f" +{len(self.phase) - 4}" if len(self.phase) > 4 else ""
            self.bar.update(self.task, description=f"re-provisioning {running}{more}")

    def _advance(self, node: str):
        self.phase.pop(node, None)
        if self.bar:
            self.bar.advance(self.task)
            self._describe()

    def _say(self, text: str) -> None:
        if self.enabled:
            err_console.print(text)


def say_unread(unread: dict[str, str], what: str) -> None:
    """Every node whose BMC could not be read, in the human output too: never a silent green."""
    if unread:
        console.print(f"[yellow bold]INCOMPLETE[/yellow bold]: {len(unread)} BMC(s) could not be read; {what}")
        for node, err in sorted(unread.items()):
            console.print(f"  [yellow]{node}: {err}[/yellow]")


def confirm_protected(ctx: Context, env: str, doing: str, yes: bool) -> None:
    """A protected environment (policy.yaml) is changed only by someone who said so: --yes, or "y"
    at a prompt on a terminal. Off a terminal without --yes it is refused (exit 3): a script that
    changes production says --yes in its own text."""
    ask_if_protected(ctx.spec.policy.protected(env), env, doing, yes)


def environment_on(remote: Remote, env: str) -> dict:
    """The server's view of an environment: {"release", "protected"}; an unknown one is its error."""
    return remote.call("GET", f"/api/v1/environments/{quote(env)}")


def ask_if_protected(protected: bool, env: str, doing: str, yes: bool) -> None:
    """confirm_protected, told by the spec here or by the server whether `env` is protected."""
    if yes or not protected:
        return
    if not sys.stdin.isatty():
        raise PolicyViolation(f"{env} is protected (policy.yaml): {doing} needs --yes when not run on a terminal")
    if not click.confirm(f"{doing}: {env} is protected. Go ahead?", default=False, err=True):
        click.echo("cancelled: nothing was changed", err=True)
        raise click.exceptions.Exit(1)


YES = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation on a protected environment.")


def rollout_exit(result) -> int:
    """The exit code of a rollout's result (or of its status alone): 8 halted, 130 interrupted,
    10 finished but left unreadable nodes alone, else 0."""
    status = getattr(result, "status", result)
    code = {"halted": RolloutHalted.exit_code, "interrupted": EXIT_INTERRUPTED}.get(status, 0)
    return code or (IncompleteRead.exit_code if getattr(result, "unread", None) else 0)


def run_interruptible(start):
    """Run `start(on_engine)` with SIGINT/SIGTERM handled as rollout/signals.py says."""
    with SignalStop(lambda text: err_console.print(f"[yellow]{text}[/yellow]")) as stop:
        return start(stop.attach)



def follow(remote: Remote, accepted: dict, progress: Callable[[dict], None],
           on_step: Callable[[dict], None] | None = None) -> RolloutResult:
    """Print (through `progress`, RolloutProgress's events) a server's rollout until it ends; its result."""
    rid, began = accepted["rollout"], time.monotonic()
    started = accepted.get("started") or {}
    if started:
        progress(started)
    detail = remote.call("GET", f"/api/v1/rollouts/{rid}")
    fresh = started.get("event") == "created"
    todo = [n for n in detail["nodes"] if n["status"] != "held" and (fresh or n["status"] in ("pending", "running"))]
    waves: dict[int, list[str]] = {}
    for n in todo:
        waves.setdefault(n["wave"], []).append(n["node"])
    wave_of = {node: w for w, nodes in waves.items() for node in nodes}
    progress({"event": "total", "nodes": len([n for n in detail["nodes"] if n["status"] != "held"]),
              "done": len(detail["nodes"]) - len(todo) - len([n for n in detail["nodes"] if n["status"] == "held"])})
    told: set[int] = set()
    for kind, data in remote.events(f"/api/v1/rollouts/{rid}/events"):
        if kind == "end":
            break
        if kind != "step":
            continue
        if on_step:
            on_step(data)
        wave = wave_of.get(data["node"])
        if data["phase"] == "begin":
            if wave is not None and wave not in told:
                told.update(w for w in waves if w <= wave)
                progress({"event": "wave", "wave": wave, "nodes": waves[wave]})
            progress({"event": "node_step", "node": data["node"], "step": data["step"]})
    detail = remote.call("GET", f"/api/v1/rollouts/{rid}")
    rows, status = detail["nodes"], detail["status"]
    result = RolloutResult(rid, status, kind=detail["kind"], reason=detail["reason"] or "",
                           done=[n["node"] for n in rows if n["status"] == "done"],
                           failed={n["node"]: n["error"] for n in rows if n["status"] == "failed"},
                           held=[n["node"] for n in rows if n["status"] == "held"],
                           halted={n["node"]: n["step"] or "prepare" for n in rows
                                   if status in ("halted", "interrupted") and n["status"] in ("pending", "running")})
    for node, error in result.failed.items():
        progress({"event": "node_failed", "node": node, "error": error})
    result.seconds = time.monotonic() - began
    result.unread = dict(started.get("unreachable") or {})
    progress({"event": status, "reason": result.reason})
    return result


def follow_remote(remote: Remote, accepted: dict, render, detach: bool = False):
    """A rollout the server started: its id (--detach), or followed to its end as a local run prints it."""
    rid = accepted["rollout"]
    if detach:
        return accepted, lambda d: console.print(f"rollout {rid} started; `provisioner rollout watch {rid}` follows it")
    try:
        result = follow(remote, accepted, RolloutProgress(True))
    except KeyboardInterrupt:
        err_console.print(f"stopped following rollout {rid}; it goes on on the server: "
                          f"`provisioner rollout watch {rid}`")
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    return result.as_dict(), render, rollout_exit(result)
