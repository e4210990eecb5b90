"""Regenerate the example spec's stand-in artifacts and the YAML files that pin their digests.

The artifacts are small, deterministic stand-ins (a `SIMFW1` header naming model, component and
version, then pseudo-random filler) so their sha256 digests are real. Run from the repository root:

    python scripts/make_example_spec.py
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODELS = {
    "r650": {
        "vendor": "Dell PowerEdge R650",
        "pins": {"bmc": ("7.10.30", "hpm", 1), "bios": ("1.13.2", "inband", 2),
                 "nic": ("22.31.6", "inband", 3), "raid": ("52.26.0", "inband", 4)},
        "recovery": {"bios": "hpm"},  # in band normally; through the BMC when the server cannot netboot
        "extra": {"bios": ["1.12.1", "1.14.0"], "bmc": ["7.00.60"]},
        "allowed": {"bios": ["1.13.2", "1.14.0"], "bmc": ["7.00.60", "7.10.30"]},
        "blocked": [{"component": "bios", "version": "1.12.1",
                     "reason": "hangs at POST after a warm reset with SR-IOV enabled",
                     "incident": "INC-3907", "by": "dana", "at": "2026-09-14T08:12:00Z"}],
    },
    "dl360g10": {
        "vendor": "HPE ProLiant DL360 Gen10",
        "pins": {"bmc": ("2.81.0", "hpm", 1), "bios": ("2.80.0", "hpm", 2),
                 "nic": ("14.32.1", "inband", 3), "raid": ("5.61.0", "inband", 4)},
        "extra": {"bios": ["2.90.0"]},
        "allowed": {},
        "blocked": [],
        # its BMC (iLO 5) speaks Redfish: FirmwareInventory names components by these SoftwareIds
        "redfish": {"bios": "U32", "bmc": "iLO5", "nic": "HPE-631FLR-SFP28", "raid": "HPE-SR-P408i-a"},
    },
}

IMAGES = {
    "ubuntu-24.04": ["vmlinuz", "initrd.img", "rootfs.squashfs"],
    "flasher-1.4": ["vmlinuz", "initrd.img"],
}


def filler(seed: str, size: int) -> bytes:
    rnd = random.Random(seed)
    return rnd.randbytes(size)


def write(rel: str, data: bytes) -> dict:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"file": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def firmware(model: str, component: str, version: str) -> dict:
    head = b"SIMFW1" + json.dumps({"model": model, "component": component, "version": version},
                                  sort_keys=True).encode() + b"\n"
    return write(f"artifacts/firmware/{model}/{component}-{version}.bin",
                 head + filler(f"{model}/{component}/{version}", 16384 - len(head)))


def yaml_ref(ref: dict, indent: str) -> str:
    return (f"{indent}file: {ref['file']}\n{indent}sha256: {ref['sha256']}\n{indent}size: {ref['size']}\n")


def main() -> None:
    for model, m in MODELS.items():
        out = [f"# Firmware pinned for {m['vendor']}. Every change here makes a new release.\n",
               f"model: {model}\nvendor: {m['vendor']}\ncomponents:\n"]
        for comp, (version, method, order) in m["pins"].items():
            ref = firmware(model, comp, version)
            recovery = m.get("recovery", {}).get(comp)
            out.append(f"  - name: {comp}\n    version: \"{version}\"\n    method: {method}\n"
                       + (f"    recovery: {recovery}          # when the server cannot netboot: HPM.1 "
                          "through the BMC\n" if recovery else "")
                       + f"    order: {order}\n    image:\n{yaml_ref(ref, '      ')}")
        for comp, versions in m["extra"].items():
            for v in versions:
                firmware(model, comp, v)  # images for other versions (rollouts, the demo's incident)
        if m["allowed"]:
            out.append("# Versions allowed in production; a pin outside this list is refused.\nallowed:\n")
            for comp, versions in m["allowed"].items():
                out.append(f"  {comp}: [{', '.join(repr(v).replace(chr(39), chr(34)) for v in versions)}]\n")
        if m.get("redfish"):
            out.append("# How this model's Redfish BMC names each component in UpdateService/FirmwareInventory\n"
                       "redfish:\n  software_ids:\n")
            out.extend(f"    {comp}: {sw}\n" for comp, sw in m["redfish"].items())
        out.append("blocked:" + (" []\n" if not m["blocked"] else "\n"))
        for b in m["blocked"]:
            out.append(f"  - component: {b['component']}\n    version: \"{b['version']}\"\n"
                       f"    reason: {b['reason']}\n    incident: {b['incident']}\n"
                       f"    by: {b['by']}\n    at: {b['at']}\n")
        (ROOT / "firmware_manifests" / f"{model}.yaml").write_text("".join(out))

    profiles = {}
    for image, files in IMAGES.items():
        profiles[image] = {f: write(f"artifacts/images/{image}/{f}",
                                    filler(f"{image}/{f}", 32768 if f != "rootfs.squashfs" else 262144))
                           for f in files}
    u, fl = profiles["ubuntu-24.04"], profiles["flasher-1.4"]
    (ROOT / "boot_profiles.yaml").write_text(
        "# Boot profiles: what a node is booted into. Artifacts are named by sha256.\n"
        "flasher: flasher\n"
        "profiles:\n"
        "  - name: ubuntu-2404\n    kind: install\n    os: Ubuntu 24.04 LTS\n"
        "    template: install.ipxe.j2\n"
        "    kernel_args: console=ttyS0,115200n8 ip=dhcp\n"
        f"    kernel:\n{yaml_ref(u['vmlinuz'], '      ')}"
        f"    initrd:\n{yaml_ref(u['initrd.img'], '      ')}"
        f"    rootfs:\n{yaml_ref(u['rootfs.squashfs'], '      ')}"
        "  - name: flasher\n    kind: flash\n    os: provisioner flasher ramdisk 1.4\n"
        "    template: flash.ipxe.j2\n"
        "    kernel_args: console=ttyS0,115200n8 quiet\n"
        f"    kernel:\n{yaml_ref(fl['vmlinuz'], '      ')}"
        f"    initrd:\n{yaml_ref(fl['initrd.img'], '      ')}")


if __name__ == "__main__":
    main()
