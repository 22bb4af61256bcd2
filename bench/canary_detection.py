"""How fast a canary release catches a fault and gives stable all the traffic back.

canary_release_job runs for real (gates, nginx router, Prometheus analysis) against the loopback release
stack of the end-to-end tests: two colours behind Debian's nginx, Prometheus scraping every second, bounded
synthetic traffic. The canary starts healthy at 20 %; once two measurements have passed, a fault is switched
on at a random point of the analysis interval. Printed per trial and as worst cases, in seconds and in
analysis intervals:
- fault -> verdict: from switching the fault on to the failing measurement (checks run every second
  between measurements, the Prometheus scrape interval);
- verdict -> stable 100 % (router): until nginx's new workers route everything to stable;
- verdict -> stable 100 % (traffic): until the first request after which no request reached the canary.
Targets: verdict within one interval, stable restored within 2 s of the verdict. Each trial also counts
requests left unanswered, and GETs retried once because a reload closed their idle keep-alive connection.

    .venv/bin/python bench/canary_detection.py [--trials N] [--interval SECONDS]
"""

import argparse
import os
import random
import tempfile
import threading
import time

import dagster as dg

from hotpot_devstack import Registry, S3Server
from hotpot_devstack.release_stack import (
    ReleaseStack,
    local_plan,
    release_definitions,
    release_spec,
)

FAULTS = {
    "5xx on 8 % of requests": ("fault_5xx_ratio", 0.08),
    "+300 ms latency": ("fault_latency", 0.3),
}


def observations(instance, run_id: str) -> list:
    return [
        entry
        for entry in instance.all_logs(run_id)
        if entry.dagster_event and entry.dagster_event.is_asset_observation
    ]


def trial(stack: ReleaseStack, spec: dict, attribute: str, value: float, interval: float) -> dict:
    stack.reset()
    time.sleep(interval + 1)  # the previous trial's requests leave the window
    job = release_definitions(spec).resolve_job_def("canary_release_job")
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        with stack.traffic(rate=80, max_seconds=120) as traffic:
            worker = threading.Thread(
                target=job.execute_in_process, kwargs={"instance": instance, "raise_on_error": False}
            )
            worker.start()
            run_id = None
            while run_id is None or len(observations(instance, run_id)) < 2:
                runs = instance.get_runs(limit=1)
                run_id = runs[0].run_id if runs else None
                time.sleep(0.05)
            last_pass = observations(instance, run_id)[-1].timestamp
            time.sleep(random.uniform(0, interval))
            setattr(stack.colors["green"], attribute, value)
            fault_at = time.time()
            worker.join(60)
            time.sleep(1.5)
        verdict = next(
            e
            for e in observations(instance, run_id)
            if e.asset_observation.metadata["verdict"].value == "fail"
        )
        restored = next(
            e.timestamp
            for e in instance.all_logs(run_id)
            if "rolled back: blue serves 100 %" in (e.user_message or "")
        )
    last_green = max(hit.at for hit in traffic.hits if hit.color == "green")
    observed = min(hit.at for hit in traffic.hits if hit.at > last_green)
    return {
        "fault_offset": fault_at - last_pass,
        "to_verdict": verdict.timestamp - fault_at,
        "to_router": restored - verdict.timestamp,
        "to_traffic": max(0.0, observed - verdict.timestamp),
        "requests": len(traffic.hits),
        "retried": sum(hit.retried for hit in traffic.hits),
        "unanswered": sum(hit.status is None for hit in traffic.hits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "devstack-access-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "devstack-secret-key")
    with ReleaseStack() as stack, Registry() as registry, S3Server() as s3:
        spec = release_spec(
            stack,
            registry,
            s3,
            local_plan(
                args.interval, ["{weight: 20, pause: 120s}"], approval_timeout="1m", blue_green_analysis="10s"
            ),
        )
        print(f"analysis interval {args.interval:g}s, canary at 20 %, ~80 requests/s, Prometheus scrape 1s")
        for name, (attribute, value) in FAULTS.items():
            results = [trial(stack, spec, attribute, value, args.interval) for _ in range(args.trials)]
            print(f"\n{name}:")
            for number, r in enumerate(results, start=1):
                intervals = r["to_verdict"] / args.interval
                print(
                    f"  trial {number}: fault {r['fault_offset']:.2f}s after a passing measurement; "
                    f"fault->verdict {r['to_verdict']:.2f}s ({intervals:.2f} intervals); "
                    f"verdict->stable 100 %: router {r['to_router']:.3f}s, traffic {r['to_traffic']:.3f}s; "
                    f"{r['requests']} requests, {r['unanswered']} unanswered, {r['retried']} retried once "
                    "(keep-alive closed by a reload)"
                )
            worst = {key: max(r[key] for r in results) for key in ("to_verdict", "to_router", "to_traffic")}
            restored = max(worst["to_router"], worst["to_traffic"])
            intervals = worst["to_verdict"] / args.interval
            print(
                f"  worst: fault->verdict {worst['to_verdict']:.2f}s = {intervals:.2f} intervals "
                f"(target <= 1); verdict->stable {restored:.3f}s (target <= 2s)"
            )


if __name__ == "__main__":
    main()
