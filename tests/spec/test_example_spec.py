from helpers import REPO

from provisioner.spec.loader import load_spec


def test_the_example_spec_loads_with_two_models_two_production_racks_and_staging():
    spec = load_spec(REPO)
    assert sorted(spec.manifests) == ["dl360g10", "r650"]
    prod = [n for _, n in spec.nodes() if n.environment == "production"]
    staging = [n for _, n in spec.nodes() if n.environment == "staging"]
    racks = {r for r, n in spec.nodes() if n.environment == "production"}
    assert len(prod) >= 16 and len(racks) >= 2 and len(staging) >= 4
    assert all(sum(1 for r, _ in spec.nodes() if r == rack) >= 8 for rack in racks)


def test_the_example_spec_ships_a_blocked_version_with_a_reason():
    spec = load_spec(REPO)
    blocked = spec.blocked()
    assert any(b.component == "bios" and b.version == "1.12.1" and "POST" in b.reason for b in blocked)


def test_every_component_pins_a_version_and_an_image_digest():
    spec = load_spec(REPO)
    for m in spec.manifests.values():
        assert {c.name for c in m.components} == {"bmc", "bios", "nic", "raid"}
        assert all(len(c.image.sha256) == 64 for c in m.components)
