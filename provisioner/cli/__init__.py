"""The `provisioner` command: thin over the parts; user errors are one line and an exit code.

Exit codes: 0 ok · 1 error (or a bug, with a traceback) · 2 spec error, or `plan` found changes ·
3 policy violation · 4 release error · 5 store error · 6 audit chain broken · 7 BMC driver error ·
8 rollout halted (or the environment is halted: `rollout resume`/`rollout abort`) ·
9 busy: another process holds the environment's, node's or BMC's lease · 130 interrupted by a signal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from provisioner.context import Context, Settings, default_actor
from provisioner.errors import ProvisionerError, SpecError

EPILOG = """\b
Examples:
  provisioner validate                      check the spec in the current directory
  provisioner release build --json          freeze it into a release; prints {"id": ...}
  provisioner release diff A B              what changed between two releases
  provisioner audit verify                  prove the audit log was not edited

Global options can also be set as environment variables:
  PROVISIONER_SPEC, PROVISIONER_DATA, PROVISIONER_DB, PROVISIONER_USER.
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--spec", "spec_dir", envvar="PROVISIONER_SPEC", default=".", show_default=True,
              type=click.Path(path_type=Path), help="Spec directory (inventory, manifests, templates).")
@click.option("--data", "data_dir", envvar="PROVISIONER_DATA", default=".provisioner", show_default=True,
              type=click.Path(path_type=Path), help="Data directory: store, artifacts, lab state.")
@click.option("--db", "db_url", envvar="PROVISIONER_DB", default=None,
              help="SQLAlchemy URL of the store [default: SQLite in the data directory].")
@click.option("--as", "actor", envvar="PROVISIONER_USER", default=None,
              help="Who is acting, for the audit log [default: your login name].")
@click.version_option(package_name="provisioner")
@click.pass_context
def cli(ctx: click.Context, spec_dir: Path, data_dir: Path, db_url: str | None, actor: str | None) -> None:
    """Bare-metal provisioning as immutable infrastructure.

    The fleet is declared in a spec directory, frozen into content-addressed releases, proven
    on staging, approved, and rolled out by re-provisioning, never by patching.
    """
    ctx.obj = Context(Settings(spec_dir=spec_dir, data_dir=data_dir, db_url=db_url,
                               actor=actor or default_actor()))


def main(argv: list[str] | None = None) -> int:
    from provisioner.cli import audit_cmd, release_cmd  # noqa: F401  (registers commands)

    for mod in ("netboot_cmd", "lab_cmd", "pipeline_cmd", "rollout_cmd", "node_cmd"):
        try:
            __import__(f"provisioner.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"provisioner.cli.{mod}":
                raise
    try:
        rv = cli.main(args=argv, prog_name="provisioner", standalone_mode=False)
        if isinstance(rv, int):  # click returns the code of an Exit raised by a command
            return rv
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except SpecError as e:
        for p in e.problems:
            click.echo(f"error: {p}", err=True)
        click.echo(f"{len(e.problems)} problem(s) in the spec", err=True)
        return e.exit_code
    except ProvisionerError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    return 0


def entry() -> None:
    sys.exit(main())
