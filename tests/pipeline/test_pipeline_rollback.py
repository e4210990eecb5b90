"""Rolling back to a release that pins a version blocked since is refused, with the version, why
it is blocked and what to do instead; nothing changes."""

from __future__ import annotations

from provisioner import pipeline
from provisioner.demo import bump_bios
from provisioner.rollout.record import RolloutRecord


def test_rollback_to_a_release_pinning_a_since_blocked_version_is_refused_and_says_what_to_do(make_site, tmp_path):
    site = make_site(lab=False)
    spec2 = tmp_path / "spec-v2"
    bump_bios(site.spec, spec2)
    bad = site.build(spec2)  # pins dl360g10 bios 2.90.0, fine at the time
    good = site.build()
    pipeline.promote(site.ctx, bad, "staging")
    pipeline.promote(site.ctx, good, "staging")
    pipeline.block(site.ctx, "bios", "2.90.0", "boot loop after flash, INC-4411", incident="INC-4411")
    audit_before = len(site.ctx.store.audit_entries())

    for args in (("rollback", "staging"), ("rollback", "staging", "--to", bad[:12])):
        out = site.cli(*args)
        assert out.returncode == 3, out.stdout + out.stderr
        assert out.stderr.startswith(f"error: cannot roll staging back to {bad[:12]}: it pins dl360g10 bios 2.90.0, ")
        assert "boot loop after flash, INC-4411" in out.stderr
        assert "build a release with another bios version and promote it instead" in out.stderr

    assert site.ctx.store.current_release_id("staging") == good
    assert RolloutRecord(site.ctx.store).rollouts() == []
    assert len(site.ctx.store.audit_entries()) == audit_before
