"""A block lands while a rollout is flashing the version it covers: nothing more is flashed to it."""

from __future__ import annotations

from provisioner import pipeline
from provisioner.demo import bump_bios


def test_a_block_issued_while_the_canary_is_being_prepared_stops_it_before_it_flashes(make_site, store_url, tmp_path):
    site = make_site(db=store_url)
    r1 = site.build()
    pipeline.promote(site.ctx, r1, "staging")
    assert pipeline.apply(site.ctx, "staging").status == "done"
    spec2 = tmp_path / "spec-v2"
    bump_bios(site.spec, spec2)
    r2 = site.build(spec2)
    ctx2 = site.context(spec2)
    pipeline.promote(ctx2, r2, "staging")
    blocked = []

    def on_call_blocks_it_as_the_canary_starts(e):
        if e["event"] == "node_step" and e["step"] == "prepare" and not blocked:
            blocked.append(e["node"])
            pipeline.block(site.context(), "bios", "2.90.0", "boot loop seen at another site, INC-4412")

    result = pipeline.apply(ctx2, "staging", progress=on_call_blocks_it_as_the_canary_starts)

    assert blocked and blocked[0] in ("s1n03", "s1n04")
    assert result.status == "halted"
    assert "release pins dl360g10 bios 2.90.0, blocked since the rollout started" in result.reason
    assert {fw["bios"] for fw in site.firmware().values()} == {"1.13.2", "2.80.0"}
    for node in site.firmware():
        assert not [e for e in site.firmware_changes(node) if e["version"] == "2.90.0"], node
