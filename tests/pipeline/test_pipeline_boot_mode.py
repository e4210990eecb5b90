"""A rollout asks each node's BMC for a PXE boot in the node's own boot mode (inventory `firmware`).

The lab's hosts are as strict as real servers: a UEFI host asked for a legacy PXE boot boots its
disk and never reports, so a rollout over the mixed staging rack (three UEFI nodes, one BIOS) only
ends done if every node got the right flag.
"""

from __future__ import annotations

from provisioner import pipeline


def test_a_rollout_sets_the_efi_boot_flag_on_uefi_nodes_and_the_legacy_one_on_bios_nodes(make_site):
    site = make_site(nodes={"s1n01", "s1n04"})  # s1n01 UEFI, s1n04 BIOS
    rid = site.build()
    assert site.cli("promote", rid[:12], "--to", "staging").returncode == 0
    modes = {n.name: n.firmware for _, n in site.ctx.spec.nodes()}
    assert modes == {"s1n01": "uefi", "s1n04": "bios"}

    plan = pipeline.plan(site.ctx, "staging")[0]
    assert {n.node: n.boot_mode for n in plan.nodes} == modes

    result = pipeline.apply(site.ctx, "staging")
    assert result.status == "done" and sorted(result.done) == ["s1n01", "s1n04"], result.as_dict()
    for node, mode in modes.items():
        asked = [e["override"] for e in site.bmc_log(node) if e["event"] == "boot_override"]
        assert asked and all((o["device"], o["persistent"], o["efi"]) == ("pxe", False, mode == "uefi")
                             for o in asked), asked
        netboots = [e for e in site.lab.host.journal if e["node"] == node and e["event"] == "pxe"]
        assert netboots and {e["loader"] for e in netboots} == {"snponly.efi" if mode == "uefi" else "undionly.kpxe"}
