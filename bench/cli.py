"""``python -m bench``: run the benchmarks, print a table, write docs/benchmarks.md.

    python -m bench                       # everything, 20 runs per case, 10 min load test
    python -m bench --quick               # a smoke run: 5 runs, 1 min load, no 10,000 groups
    python -m bench --runs 20 --only failover,keepalived,scale,load

Sections: failover (Vigil in the lab: node loss, app crash, planned switchover; default and
tuned timing), keepalived (the same kill and client, VRRPv2 advert_int 1 and VRRPv3 0.1),
scale (membership + placement with simulated agents), load (no false failover with one core
saturated). Needs root (network namespaces) and installs keepalived with apt-get if missing.
Everything it starts is its own: labs with the ``--prefix`` namespaces, processes by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import shutil
import signal
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import msgspec

from vigil.lab.lab import lab_dir, require_root
from vigil.lab.netns import namespaces
from vigil.wire.cluster import Timing

from . import failover, keepalived, load, machine, micro, report, scale

SECTIONS = ("failover", "keepalived", "scale", "load")
REPO = Path(__file__).resolve().parent.parent
FULL_SCALE = "10x1000,100x100,100x1000,100x10000,100x1000c,100x10000c"
QUICK_SCALE = "10x1000,100x100,100x1000,100x1000c"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer runs, shorter load")
    p.add_argument("--runs", type=int, help="runs per failover case (default 20, quick 5)")
    p.add_argument("--timings", default="default,tuned", help="Vigil timing sets")
    p.add_argument("--keepalived", default="v2,v3", help="keepalived configs (v2, v3)")
    p.add_argument(
        "--scale",
        help=f"NODESxGROUPS[c] cases (default {FULL_SCALE}; c = concentrated on one node)",
    )
    p.add_argument("--scale-runs", type=int, help="failovers per scale case (default 5, quick 2)")
    p.add_argument("--load-minutes", type=float, help="load test length (default 10, quick 1)")
    p.add_argument(
        "--load-timings",
        help="timing sets for the load test, NAME[:MINUTES] (default: 'default,tuned:2'; "
        "quick: 'default'); without MINUTES, --load-minutes",
    )
    p.add_argument("--idle", type=float, help="idle measurement window, s (default 10, quick 3)")
    p.add_argument("--prefix", default="vbench", help="lab name prefix (default vbench)")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument(
        "--json", help="where to write the raw results (default /run/vigil/PREFIX-results.json)"
    )
    p.add_argument(
        "--render", metavar="JSON", help="no measuring: rewrite --out from saved raw results"
    )
    p.add_argument("--no-install", action="store_true", help="do not apt-get install anything")
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the labs' logs in /run/vigil/PREFIX*"
    )
    args = p.parse_args(argv)
    args.sections = [s for s in args.only.split(",") if s]
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        p.error(f"unknown section(s) {', '.join(sorted(bad))}; choose from {', '.join(SECTIONS)}")
    q = args.quick
    args.runs = args.runs or (5 if q else 20)
    args.scale_runs = args.scale_runs or (2 if q else 5)
    args.load_minutes = args.load_minutes if args.load_minutes is not None else (1 if q else 10)
    args.idle = args.idle or (3.0 if q else 10.0)
    args.load_timings = args.load_timings or ("default" if q else "default,tuned:2")
    args.scale = args.scale or (QUICK_SCALE if q else FULL_SCALE)
    return args


def lab_names(args: argparse.Namespace) -> list[str]:
    """Every lab (and scale work directory) name this run may use, all under ``--prefix``."""
    p = args.prefix
    return [
        *(f"{p}f{t[0]}" for t in args.timings.split(",")),
        *(f"{p}k{k}" for k in args.keepalived.split(",")),
        *(f"{p}l{t[0]}" for t in args.load_timings.split(",")),
        f"{p}s",
    ]


def command_line() -> str:
    exe = Path(sys.executable)
    py = ".venv/bin/python" if exe.parent == REPO / ".venv" / "bin" else "python"
    return shlex.join([py, "-m", "bench", *sys.argv[1:]])


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


async def run(args: argparse.Namespace, res: report.Results) -> None:
    for section in args.sections:
        started = time.monotonic()
        try:
            await SECTION_RUNNERS[section](args, res)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next section still runs; the labs were removed
            traceback.print_exc()
            res.errors.append(f"{section}: {type(exc).__name__}: {exc}")
        res.section_s[section] = time.monotonic() - started


async def run_failover(args: argparse.Namespace, res: report.Results) -> None:
    res.fence = await asyncio.to_thread(micro.measure_fence, f"{args.prefix}m", 50)
    log(f"== one fence renewal: {res.fence.ms(1)} ms (min / p50 / p90 / max)")
    for name in args.timings.split(","):
        log(f"== failover, {name} timing: {args.runs} runs each")
        res.failover.append(
            await failover.run_timing(
                f"{args.prefix}f{name[0]}", name, args.runs, args.runs, args.runs, args.idle, log
            )
        )
        res.probe_command = res.probe_command or res.failover[-1].probe_command


async def run_keepalived(args: argparse.Namespace, res: report.Results) -> None:
    for key in args.keepalived.split(","):
        log(f"== keepalived {key}: {args.runs} runs")
        res.keepalived.append(
            await keepalived.run_config(f"{args.prefix}k{key}", key, args.runs, log)
        )


async def run_scale(args: argparse.Namespace, res: report.Results) -> None:
    base = lab_dir(f"{args.prefix}s")
    try:
        for case in args.scale.split(","):
            nodes, _, groups = case.rstrip("c").partition("x")
            layout = "concentrated" if case.endswith("c") else "spread"
            log(f"== scale: {nodes} nodes, {groups} groups, {layout}")
            runs = args.scale_runs
            if layout == "concentrated":  # a fresh control plane per run
                runs = 1 if int(groups) > 1000 else max(1, runs // 2)
            res.scale.append(
                await scale.run_case(
                    base,
                    int(nodes),
                    int(groups),
                    layout,
                    runs,
                    args.idle,
                    True,
                    Timing(),
                    log,
                    res.scale_commands,
                )
            )
    finally:
        if not any(c.error for c in res.scale):
            shutil.rmtree(base, ignore_errors=True)


async def run_load(args: argparse.Namespace, res: report.Results) -> None:
    for item in args.load_timings.split(","):
        name, _, minutes = item.partition(":")
        length = float(minutes) if minutes else args.load_minutes
        log(f"== load, {name} timing: {length:g} min with one core saturated")
        res.load.append(await load.run_load(f"{args.prefix}l{name[0]}", name, length * 60, log))


SECTION_RUNNERS = {
    "failover": run_failover,
    "keepalived": run_keepalived,
    "scale": run_scale,
    "load": run_load,
}


def save(res: report.Results, path: Path) -> None:
    # json (not msgspec) so that NaN, "not measured", survives the round trip
    path.write_text(json.dumps(msgspec.to_builtins(res), indent=1))


def load_results(path: Path) -> report.Results:
    return msgspec.convert(json.loads(path.read_text()), report.Results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        res = load_results(Path(args.render))
        Path(args.out).write_text(report.markdown(res))
        print(report.console(res))
        print(f"wrote {args.out} from {args.render}")
        return 0
    reason = require_root()
    if reason is not None:
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    installed = [] if args.no_install else machine.ensure_packages()
    started = time.monotonic()
    res = report.Results(
        argv=command_line(),
        quick=args.quick,
        started=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        facts=machine.facts(args.prefix),
        installed=installed,
    )

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await run(args, res)
        except asyncio.CancelledError:
            res.errors.append("interrupted")
        except Exception as exc:  # report what we have; the labs were removed on the way out
            traceback.print_exc()
            res.errors.append(f"{type(exc).__name__}: {exc}")

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(guarded())
    res.duration_s = time.monotonic() - started
    if not args.keep_logs:
        for name in lab_names(args):
            if not any(n.startswith(f"{name}-") for n in namespaces()):
                shutil.rmtree(lab_dir(name), ignore_errors=True)
    res.facts.load_after = machine.loadavg()
    res.facts.code_after = machine.fingerprint()
    print(report.console(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.markdown(res))
    print(f"wrote {out}")
    raw = (
        Path(args.json)
        if args.json
        else lab_dir(args.prefix).parent / f"{args.prefix}-results.json"
    )
    raw.parent.mkdir(parents=True, exist_ok=True)
    save(res, raw)
    print(f"raw results in {raw} (python -m bench --render {raw} rewrites the report)")
    return 1 if res.errors else 0


if __name__ == "__main__":
    sys.exit(main())
