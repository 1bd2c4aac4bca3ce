"""Runs doit in this very process, then writes what the process itself cost to $BENCH_PROBE
(JSON): peak RSS and bytes read through read() calls. Children (mksquashfs, …) are separate
processes and not counted, so this is the bakery's own Python process.
With $BENCH_PROFILE set, the run is profiled with cProfile into that file.
"""
import atexit
import json
import os
import resource
import runpy
import sys


def _report() -> None:
    with open("/proc/self/io") as f:
        io = {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines())}
    with open(os.environ["BENCH_PROBE"], "w") as f:
        json.dump({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                   "rchar": io["rchar"]}, f)


if os.environ.get("BENCH_PROBE"):
    atexit.register(_report)
sys.argv = ["doit", *sys.argv[1:]]
if os.environ.get("BENCH_PROFILE"):
    import cProfile
    profiler = cProfile.Profile()
    atexit.register(lambda: profiler.dump_stats(os.environ["BENCH_PROFILE"]))
    profiler.enable()
runpy.run_module("doit", run_name="__main__", alter_sys=True)
