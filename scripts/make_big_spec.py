"""Write a copy of the example spec with N production nodes (racks of 40), for benchmarks.

    python scripts/make_big_spec.py 1000 /tmp/spec-1000 [--concurrency 64]

BMCs are on 127.20.<rack>.<n>:6230 (loopback only). The rollout policy is widened for a big
site (waves of 250, 20 nodes per rack at once, 64 operations in flight).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ITEMS = ["deny-list.yaml", "boot_profiles.yaml", "firmware_manifests", "templates", "artifacts"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("nodes", type=int)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--per-rack", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--fleet", choices=("mixed", "ipmi"), default="mixed",
                    help="mixed: the dl360g10 BMCs speak Redfish, as in the example spec; ipmi: every BMC IPMI "
                         "(the fleet of the benchmarks before the Redfish driver, for side-by-side runs)")
    args = ap.parse_args()
    if args.dest.exists():
        shutil.rmtree(args.dest)
    args.dest.mkdir(parents=True)
    for item in ITEMS:
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy2)(ROOT / item, args.dest / item)
    lines = ["site: bench", "credentials:", "  lab:", "    username: admin",
             "    password_env: PROVISIONER_LAB_BMC_PASSWORD", "racks:"]
    racks = (args.nodes + args.per_rack - 1) // args.per_rack
    i = 0
    for r in range(racks):
        lines += [f"  - name: rack{r:03d}", "    nodes:"]
        for n in range(args.per_rack):
            if i == args.nodes:
                break
            model = "r650" if r % 2 == 0 else "dl360g10"
            redfish = model == "dl360g10" and args.fleet == "mixed"
            lines += [f"      - name: rack{r:03d}n{n:02d}",
                      f"        macs: [\"52:54:01:{r // 256:02x}:{r % 256:02x}:{n:02x}\"]",
                      f"        model: {model}", "        environment: production",
                      "        boot_profile: ubuntu-2404", f"        firmware: {'uefi' if n % 4 else 'bios'}",
                      # a mixed fleet, like the example: the dl360g10 BMCs speak Redfish
                      f"        bmc: {{driver: {'redfish' if redfish else 'ipmi'}, address: 127.20.{r}.{n + 1}, "
                      f"port: {8443 if redfish else 6230}, credentials: lab}}"]
            i += 1
    (args.dest / "inventory.yaml").write_text("\n".join(lines) + "\n")
    (args.dest / "policy.yaml").write_text(f"""environments: [staging, production]
rollout:
  canary: 1
  wave_size: 250
  max_unavailable_per_rack: 20
  max_concurrency: {args.concurrency}
  failure_threshold: 5
  timeouts: {{power: 30, boot: 60, flash: 120, callback: 60}}
staging_gate: {{min_nodes: 1, soak_seconds: 0, success_ratio: 1.0, approvals: 1}}
""")


if __name__ == "__main__":
    main()
