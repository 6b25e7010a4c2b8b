"""Run every benchmark and print its table (``make bench``). Keeps the whole run under ~8 minutes once the
cluster tests' control plane is built (the first build takes about 6 minutes more).

Benchmarks: scrape throughput and latency against two baselines, event-loop lag under 50 scrapes/s,
whole-agent footprint, (real GPU only) sweep cost against NVML and nvidia-smi, MIG planning time, and a
200-agent fleet against the test API server (label writes at startup and when converged, requests per agent
per hour), an injected XID to gpuhealth's verdict, the device plugin (RPC latency, XID to Unhealthy,
kubelet restart, memory), the DRA plugin (NodePrepareResources latency, ResourceSlice writes, memory),
and a 500-node fleet against the real kube-apiserver and etcd (bench_fleet_real).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (
    bench_deviceplugin,
    bench_dra,
    bench_driver_recheck,
    bench_fleet,
    bench_fleet_real,
    bench_footprint,
    bench_gpu_sweep,
    bench_imports,
    bench_loop_lag,
    bench_mig_plan,
    bench_scaling,
    bench_scrape,
    bench_xid_latency,
)

BENCHMARKS = (
    bench_scrape,
    bench_scaling,
    bench_imports,
    bench_loop_lag,
    bench_footprint,
    bench_driver_recheck,
    bench_gpu_sweep,
    bench_mig_plan,
    bench_fleet,
    bench_xid_latency,
    bench_deviceplugin,
    bench_dra,
    bench_fleet_real,
)


def main() -> int:
    started = time.monotonic()
    for module in BENCHMARKS:
        t0 = time.monotonic()
        for text in module.main():
            print(text, flush=True)
        print(f"\n({module.__name__.rsplit('.', 1)[-1]}: {time.monotonic() - t0:.0f} s)", flush=True)
    print(f"\nall benchmarks: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
