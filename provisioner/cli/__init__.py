"""The `provisioner` command: thin over the parts; user errors are one line and an exit code.

Exit codes: 0 ok · 1 error (or a bug, with a traceback) · 2 spec error, a wrong option or argument,
or `plan` found changes · 3 policy violation · 4 release error · 5 store error (also: no space left
on the data directory's disk) · 6 audit chain broken · 7 BMC driver error · 8 rollout halted (or the
environment is halted: `rollout resume`/`rollout abort`) · 9 busy: another process holds the
environment's, node's or BMC's lease · 10 incomplete: some BMC could not be read (plan, drift,
status, apply) · 11 not authenticated (wrong password or token, disabled account) · 130 interrupted.

Log lines go to stderr only when asked (`--log LEVEL` or PROVISIONER_LOG, `serve -v`), so what a
command prints for people is never interleaved with `rollout.halt ...` records.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

import click

from provisioner.auth.identity import Actor
from provisioner.context import Context, Settings, default_actor
from provisioner.errors import ProvisionerError, SpecError
from provisioner.spec.files import DEFAULT_MAX_FILE_BYTES, MAX_FILE_BYTES_ENV, SpecLimits

EPILOG = """\b
Examples:
  provisioner validate                      check the spec in the current directory
  provisioner release build --json          freeze it into a release; prints {"id": ...}
  provisioner release diff A B              what changed between two releases
  provisioner audit verify                  prove the audit log was not edited
  provisioner user add bob --role approver  an account (password asked for)

Global options can also be set as environment variables:
PROVISIONER_SPEC, PROVISIONER_DATA, PROVISIONER_DB, PROVISIONER_SPEC_MAX_FILE_BYTES.
PROVISIONER_SERVER (or `provisioner login --server URL`): operator commands go through that
operator API; PROVISIONER_TOKEN is then your personal API token (on the server host without a
server, commands act as its account). Without either, commands act on the local store as the
installation's root (root@HOST, with your login name).
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--spec", "spec_dir", envvar="PROVISIONER_SPEC", default=".", show_default=True,
              type=click.Path(path_type=Path), help="Spec directory (inventory, manifests, templates).")
@click.option("--data", "data_dir", envvar="PROVISIONER_DATA", default=".provisioner", show_default=True,
              type=click.Path(path_type=Path), help="Data directory: store, artifacts, lab state.")
@click.option("--db", "db_url", envvar="PROVISIONER_DB", default=None,
              help="SQLAlchemy URL of the store [default: SQLite in the data directory].")
@click.option("--spec-max-file-bytes", envvar=MAX_FILE_BYTES_ENV, type=click.IntRange(1), default=None,
              help=f"Largest spec file (YAML or template) read [default: {DEFAULT_MAX_FILE_BYTES:,}].")
@click.option("--log", "log_level", envvar="PROVISIONER_LOG", default=None,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              help="Print log records of this level and above to stderr [default: none].")
@click.version_option(package_name="provisioner")
@click.pass_context
def cli(ctx: click.Context, spec_dir: Path, data_dir: Path, db_url: str | None,
        spec_max_file_bytes: int | None, log_level: str | None) -> None:
    """Bare-metal provisioning as immutable infrastructure.

    The fleet is declared in a spec directory, frozen into content-addressed releases, proven
    on staging, approved, and rolled out by re-provisioning, never by patching.
    """
    configure_logging(log_level)
    limits = SpecLimits(**({"max_file_bytes": spec_max_file_bytes} if spec_max_file_bytes else {}))
    # Direct store access is the installation's root, labelled with the OS login (auth/identity.py);
    # PROVISIONER_TOKEN, when set, makes the commands act as its account. With a server set
    # (`provisioner login`, PROVISIONER_SERVER) commands go through the operator API (remote.py).
    ctx.obj = Context(Settings(spec_dir=spec_dir, data_dir=data_dir, db_url=db_url,
                               actor=Actor.local_store(claimed=default_actor()),
                               token=os.environ.get("PROVISIONER_TOKEN") or None,
                               spec_limits=limits))


class _Quiet(logging.NullHandler):
    """Stands in the root logger so Python's last-resort handler never prints records nobody asked for."""


def configure_logging(level: str | None) -> None:
    """Send log records to stderr at `level`, or nowhere (the default: output is for people)."""
    root = logging.getLogger()
    if level:
        logging.basicConfig(level=level.upper(), stream=sys.stderr, force=True,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    elif not root.handlers:
        root.addHandler(_Quiet())


def logging_asked() -> bool:
    return any(not isinstance(h, _Quiet) for h in logging.getLogger().handlers)


def _oserror(e: OSError) -> tuple[str, int]:
    """One line and an exit code for an OSError that reached the top: the machine, not a bug."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on device{where}: free space there (or use --data/--db on another disk), "
                "then run the command again; nothing was half-written"), 5
    if e.errno == errno.EROFS:
        return f"read-only file system{where}: use --data/--db on a writable disk", 5
    return f"{e.strerror or e}{where}", 1


def main(argv: list[str] | None = None) -> int:
    from provisioner.cli import audit_cmd, release_cmd  # noqa: F401  (registers commands)

    for mod in ("netboot_cmd", "lab_cmd", "pipeline_cmd", "observe_cmd", "rollout_cmd", "node_cmd", "user_cmd",
                "api_cmd", "login_cmd", "db_cmd", "worker_cmd"):
        try:
            __import__(f"provisioner.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"provisioner.cli.{mod}":
                raise
    try:
        rv = cli.main(args=argv, prog_name="provisioner", standalone_mode=False)
        if isinstance(rv, int):  # click returns the code of an Exit raised by a command
            return rv
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        click.echo(f"error: {e.format_message()}{hint}", err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except SpecError as e:
        for p in e.problems:
            click.echo(f"error: {p}", err=True)
        if len(e.problems) > 1:  # one problem is one line
            click.echo(f"{len(e.problems)} problem(s) in the spec", err=True)
        return e.exit_code
    except ProvisionerError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except BrokenPipeError:  # `provisioner ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        message, code = _oserror(e)
        click.echo(f"error: {message}", err=True)
        return code
    return 0


def entry() -> None:
    sys.exit(main())
