"""plan and compliance read from the store, on both stores: on a generated 200-node site with every
kind of node (never read, drifted, at the pins, running a blocked version, in maintenance, needing
hands, failed, installed), they equal what the base commit's ORM-row versions made
(plan_reference.py): the faster reads change the cost, not one field of the result."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from helpers import REPO
from plan_reference import compliance as reference_compliance
from plan_reference import make_plan as reference_make_plan
from plan_reference import plan as reference_plan
from sqlalchemy import update

from provisioner import pipeline
from provisioner.context import Context, Settings
from provisioner.operations.common import active_blocks, release_of
from provisioner.operations.nodes import observe
from provisioner.plan import make_plan
from provisioner.releases.build import freeze, import_artifacts
from provisioner.releases.view import ReleaseView
from provisioner.store.models import NodeRow


@pytest.fixture
def site(store_url, tmp_path):
    spec = tmp_path / "spec"
    subprocess.run([sys.executable, str(REPO / "scripts/make_big_spec.py"), "200", str(spec), "--per-rack", "40"],
                   check=True, capture_output=True)
    inv = spec / "inventory.yaml"
    lines = inv.read_text().splitlines()
    rack4 = lines.index("  - name: rack004")  # the last rack is staging's, which points at no release
    inv.write_text("\n".join(lines[:rack4] + [x.replace("environment: production", "environment: staging")
                                              for x in lines[rack4:]]) + "\n")
    ctx = Context(Settings(spec_dir=spec, data_dir=tmp_path / "data", db_url=store_url, actor="alice"))
    rel = freeze(ctx.spec)
    import_artifacts(spec, rel, ctx.artifacts)
    ctx.store.add_release(rel, "alice")
    ctx.store.sync_nodes(ctx.spec)
    ctx.store.point_environment("production", rel.id, "alice", "test")
    pins = {m: {c["name"]: c["version"] for c in v["components"]} for m, v in rel.document["manifests"].items()}
    rng = random.Random(14)
    states = ["new"] * 6 + ["verified", "maintenance", "needs-hands", "failed", "held"]
    with ctx.store.db.write() as c:
        for i, r in enumerate(ctx.store.nodes()):
            fw = {**pins[r.model]}
            kind = rng.randrange(8)
            if kind == 0:
                fw = {}  # never read
            elif kind == 1:
                fw["nic"] = "0.0.1"  # drifted
            elif kind == 2:
                fw["bios"] = "0.9.9-bad"  # runs a version blocked below
            elif kind == 3:
                fw["tpm"] = "7.2"  # a component the release does not pin
            state = rng.choice(states)
            c.execute(update(NodeRow).where(NodeRow.name == r.name).values(
                observed=fw, state=state, state_reason=f"because {i}" if state != "new" else "",
                release_id=rel.id if rng.random() < 0.4 else None,
                installed_release=rel.id if rng.random() < 0.3 else None))
    ctx.store.block("bios", "0.9.9-bad", "bricks the board", by="alice")
    ctx.store.block("nic", "0.0.1", "drops links", by="alice", model="r650")
    fresh = Context(Settings(spec_dir=spec, data_dir=tmp_path / "data", db_url=store_url, actor="alice"))
    yield fresh
    for c in (ctx, fresh):
        c.store.db.engine.dispose()


def test_plan_and_compliance_from_the_store_equal_the_base_commits(site):
    ctx = site
    plan, _ = pipeline.plan(ctx, "production", refresh=False)
    assert len(plan.nodes) == 160
    assert {n.action for n in plan.nodes} >= {"reprovision", "reflash", "hold", "recover", "reimage"}, \
        {n.action for n in plan.nodes}
    assert plan == reference_plan(ctx, "production")

    unread = {"rack000n03": "IpmiTimeout: no answer", "rack001n07": "RedfishError: 503"}
    view = ReleaseView.of(release_of(ctx, "production"))
    observed, _ = observe(ctx, "production", refresh=False)
    assert make_plan(view, "production", observed, active_blocks(ctx), unread=unread) == \
        reference_make_plan(view, "production", observed, active_blocks(ctx), unread=unread)

    for envs in (None, ["production"], ["staging"]):
        got = pipeline.compliance(ctx, envs, unread=unread)
        assert got == reference_compliance(ctx, envs, unread=unread)
    everything = pipeline.compliance(ctx)
    assert len(everything) == 200
    assert {r["compliant"] for r in everything} == {True, False}
    assert any(c["blocked"] for r in everything for c in r["components"].values())
