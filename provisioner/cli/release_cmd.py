"""`provisioner validate` and `provisioner release build|list|show|diff`."""

from __future__ import annotations

import click

from provisioner.cli import cli
from provisioner.cli.output import console, json_option, table
from provisioner.cli.remote import on_this_host, quote, remote_for
from provisioner.context import Context
from provisioner.operations import releases
from provisioner.releases.diff import diff_releases
from provisioner.releases.view import ReleaseView


@on_this_host("the spec directory here, not the server's")
@cli.command()
@json_option
@click.pass_obj
def validate(ctx: Context):
    """Check the spec directory: every file, every field, every cross-reference.

    \b
    Each problem is one line: FILE:LINE: FIELD: what is wrong; expected what.
    Exit code 2 when anything is wrong.

    \b
    Example:
      provisioner --spec ./site-spec validate
    """
    spec = ctx.spec
    data = {"ok": True, "site": spec.inventory.site, "nodes": len(spec.nodes()),
            "models": sorted(spec.manifests), "blocked_versions": len(spec.blocked()),
            "templates": len(spec.templates)}

    def render(d):
        console.print(f"spec OK: site {d['site']}, {d['nodes']} nodes, models {', '.join(d['models'])}, "
                      f"{d['blocked_versions']} blocked version(s), {d['templates']} templates")

    return data, render


@cli.group()
def release():
    """Freeze the spec into immutable, content-addressed releases and compare them."""


@release.command("build")
@json_option
@click.pass_obj
def release_build(ctx: Context):
    """Freeze the spec (with the digests of every template and artifact) into a release.

    \b
    The release id is the sha256 of the release's canonical JSON: the same spec always gives
    the same id, whatever the key order, formatting or comments; any change gives a new one.
    Artifacts are copied into the content-addressed store (DATA/artifacts/sha256/<hex>).
    Through the operator API (`provisioner login`) it freezes the server's spec (its --spec
    directory), not a spec directory here.

    \b
    Example:
      provisioner release build --json      # {"id": "3f1c…", "created": true, ...}
    """
    remote = remote_for(ctx.settings)
    data = remote.call("POST", "/api/v1/releases") if remote else releases.build(ctx)

    def render(d):
        state = "new release" if d["created"] else "already stored (same content, same id)"
        console.print(f"release [bold]{d['id']}[/bold]  {state}\n"
                      f"  {d['nodes']} nodes, {d['artifacts']} artifacts, {d['templates']} templates "
                      f"({d['files_newly_stored']} files newly stored)")

    return data, render


@release.command("list")
@json_option
@click.pass_obj
def release_list(ctx: Context):
    """List stored releases, oldest first, and which environments point at each."""
    remote = remote_for(ctx.settings)
    rows = remote.call("GET", "/api/v1/releases") if remote else ctx.store.list_releases()

    def render(d):
        table("releases", ["id", "created", "author", "environments"],
              [[r["id"][:16], r["created_at"][:19], r["author"], ", ".join(r["environments"])] for r in d])

    return rows, render


@release.command("show")
@click.argument("release_id")
@json_option
@click.pass_obj
def release_show(ctx: Context, release_id: str):
    """Show one release: pinned firmware per model, boot profiles, policy.

    RELEASE_ID may be a unique prefix (at least 4 hex digits).
    """
    remote = remote_for(ctx.settings)
    data = remote.call("GET", f"/api/v1/releases/{quote(release_id)}") if remote else releases.show(ctx, release_id)
    doc = data["document"]

    def render(d):
        console.print(f"release [bold]{d['id']}[/bold] by {d['author']} at {d['created_at'][:19]}")
        rows = [[model, c["name"], c["version"], c["method"], c["image"]["sha256"][:12]]
                for model, m in sorted(doc["manifests"].items()) for c in m["components"]]
        table("pinned firmware", ["model", "component", "version", "method", "image sha256"], rows)
        table("boot profiles", ["profile", "kind", "os", "template"],
              [[p["name"], p["kind"], p["os"], p["template"]] for p in doc["boot"]["profiles"]])
        n = sum(len(r["nodes"]) for r in doc["inventory"]["racks"])
        console.print(f"{n} nodes in {len(doc['inventory']['racks'])} racks; gate: "
                      f"{doc['policy']['staging_gate']}")

    return data, render


@release.command("diff")
@click.argument("a")
@click.argument("b")
@json_option
@click.pass_obj
def release_diff(ctx: Context, a: str, b: str):
    """What changed from release A to release B: firmware, images, templates, policy, inventory.

    \b
    Example:
      provisioner release diff 3f1c 9ab0
    """
    remote = remote_for(ctx.settings)
    if remote:  # both documents from the server, compared here
        ra, rb = (ReleaseView.of_document(d["id"], d["document"])
                  for d in (remote.call("GET", f"/api/v1/releases/{quote(ref)}") for ref in (a, b)))
        changes = diff_releases(ra, rb)
    else:
        ra, rb = ctx.store.get_release(a), ctx.store.get_release(b)
        changes = diff_releases(ReleaseView.of(ra), ReleaseView.of(rb))
    data = {"from": ra.id, "to": rb.id, "changes": [c.as_dict() for c in changes]}

    def render(_d):
        console.print(f"{ra.short} → {rb.short}: {len(changes)} change(s)")
        for c in changes:
            console.print(f"  {c}")

    return data, render
