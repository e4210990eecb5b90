"""Benchmark: the console's live rollout page during a 1,000-node rollout, in Debian's Chromium.

    python bench/console_rollout.py [--nodes 1000] [--loads 3]

The simulated site (`provisioner lab up`, the 1,000-node spec of pipeline_scale.py) runs in one
process, the rollout (`provisioner apply production --yes`) in another, and the console (cheroot)
in this one, as they would on a server. While the rollout runs, the rollout page is loaded
`--loads` times (time to first contentful paint, and the server's answer), then left open:
every step the page shows is matched to its row in the store, and the latency is the time from
the step being written to the page's DOM showing it (server-sent events, a look at the store
every 0.5 s). Long tasks (> 50 ms on the page's main thread) are counted: a page that keeps up
has few.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "console"))  # console_browser: Chromium through Selenium
sys.path.insert(0, str(ROOT / "tests"))  # helpers, which console_browser uses

from pipeline_scale import machine, release  # noqa: E402  (bench/, the script's own folder)

from provisioner.context import Context, Settings  # noqa: E402
from provisioner.rollout.record import RolloutRecord  # noqa: E402

PASSWORD = "bench-console-pass"
WATCH = """
window.__seen = []; window.__long = [];
new MutationObserver(function (ms) {
  var t = Date.now();
  ms.forEach(function (m) { m.addedNodes.forEach(function (n) { window.__seen.push([n.textContent, t]); }); });
}).observe(document.getElementById("steps"), {childList: true});
new PerformanceObserver(function (l) { l.getEntries().forEach(function (e) { window.__long.push(e.duration); }); })
  .observe({type: "longtask", buffered: true});
"""
PAINT = """
var nav = performance.getEntriesByType("navigation")[0];
var fcp = performance.getEntriesByType("paint").filter(function (e) { return e.name === "first-contentful-paint"; });
return {fcp: fcp.length ? fcp[0].startTime : null, ttfb: nav.responseStart, response_end: nav.responseEnd,
        dom: nav.domContentLoadedEventEnd, rows: document.querySelectorAll("tr[data-node]").length};
"""


def private_block(spec: Path) -> None:
    """Move the spec's BMCs from 127.20.x.y to a 127.N block nobody uses now (other benchmarks may
    hold 127.20 on this machine)."""
    import random

    from provisioner.lab.loopback import _free

    for _ in range(100):
        n = random.randint(60, 250)
        if all(_free(f"127.{n}.{r}.{i}", p) for r in (0, 12, 24) for i in (1, 40) for p in (6230, 8443)):
            inv = spec / "inventory.yaml"
            inv.write_text(inv.read_text().replace("address: 127.20.", f"address: 127.{n}."))
            return
    raise OSError("no free 127.N block for the lab")


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else (values[0] if values else float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--loads", type=int, default=3)
    args = ap.parse_args()
    from console_browser import new_driver, sign_in

    from provisioner.console.app import ConsoleServer, create_console_app
    from provisioner.console.session import SessionPolicy

    print(f"machine: {machine()}; load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="provisioner-bench-console-"))
    spec, data = work / "spec", work / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts/make_big_spec.py"), str(args.nodes), str(spec)], check=True)
    private_block(spec)
    ctx = Context(Settings(spec_dir=spec, data_dir=data, actor="bench"))
    r1 = release(ctx, spec, "bench")
    ctx.store.point_environment("production", r1, "bench", "bench")
    ctx.store.accounts.add("watch", "viewer", "bench", password=PASSWORD)
    cli = [sys.executable, "-m", "provisioner", "--spec", str(spec), "--data", str(data)]
    server = ConsoleServer(create_console_app(ctx, policy=SessionPolicy(secure=False))).start()
    driver = new_driver()
    apply = None
    try:
        subprocess.run(cli + ["lab", "up", "--timeout", "300"], check=True)
        sign_in(driver, server.url, "watch", PASSWORD)
        apply = subprocess.Popen(cli + ["apply", "production", "--yes"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        record = RolloutRecord(ctx.store)
        while not record.rollouts("production"):
            time.sleep(0.2)
        rid = record.rollouts("production")[-1].id
        paints = []
        for _ in range(args.loads):
            driver.get(server.url + f"rollouts/{rid}")
            paints.append(driver.execute_script(PAINT))
        driver.execute_script(WATCH)
        apply.wait(timeout=1800)
        time.sleep(2)  # the last look at the store, and its events
        seen = driver.execute_script("return window.__seen")
        long_tasks = driver.execute_script("return window.__long")
        steps = {}
        for s in record.steps(rid):
            steps.setdefault((s["node"], s["step"], s["phase"]), s["at"])
        lat = []
        for label, t in seen:
            parts = label.split(" ")
            at = steps.get(tuple(parts[1:4]))
            if at is not None:
                lat.append(t / 1000 - at.replace(tzinfo=at.tzinfo or UTC).timestamp())
        status = record.rollout(rid).status
    finally:
        if apply is not None and apply.poll() is None:
            apply.kill()
        driver.quit()
        server.stop()
        subprocess.run(cli + ["lab", "down"], check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"rollout {rid}: {status}, {len(steps)} steps in the store; {len(lat)} shown live and matched")
    print("\n| rollout page, 1,000 rows | first contentful paint (ms) | server answer done (ms) | DOM ready (ms) |")
    print("|---|---|---|---|")
    for i, p in enumerate(paints, 1):
        print(f"| load {i} ({p['rows']} rows) | {p['fcp']:.0f} | {p['response_end']:.0f} | {p['dom']:.0f} |")
    if lat:
        print(f"\nSSE update latency (step written → page shows it), {len(lat)} steps: p50 {pct(lat, 50) * 1000:.0f} ms, "
              f"p95 {pct(lat, 95) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
    print(f"long tasks on the page while it ran: {len(long_tasks)} (longest "
          f"{max(long_tasks, default=0):.0f} ms); load average at end: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; at {datetime.now(UTC):%H:%M} UTC")
    return 0 if status == "done" and lat else 1


if __name__ == "__main__":
    sys.exit(main())
