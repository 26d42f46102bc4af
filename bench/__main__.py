"""The benchmark suite: sift against rsync and Syncthing on the same data, in the same run.

    python -m bench [--scenarios abcdefg] [--repeat 3] [--tools sift,rsync,syncthing]
                    [--json bench/results/latest.json] [--markdown FILE] [--smoke]

Every tool runs as real processes on 127.0.0.1. Each figure is the median of --repeat runs with
min and max; sift/competitor ratios are taken per run, then summarised. --smoke runs every
scenario once at a tiny size: it fails when a tool does not converge or bytes differ, never on
timing. Exit status: 0 when every scenario ran (targets are reported, not enforced), 1 when a
scenario broke, 2 on bad arguments or missing tools.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import sift
from bench.common import BenchError
from bench.report import evaluate, render_markdown, render_targets, render_text, summarise
from bench.scenarios import SCENARIOS, Settings

SMOKE = {
    "repeat": 1,
    "size_mib": 8,
    "peers": 2,
    "shaped_size_mib": 4,
    "small_files": 300,
    "rss_sizes_mib": (4, 8),
    "join_peers": 3,
    "join_size_mib": 4,
    "timeout": 120.0,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", default="abcdefg", help="letters of the scenarios to run")
    p.add_argument("--tools", default="sift,rsync,syncthing")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--size-mib", type=int, default=1024, help="(a), (c), (e) dataset size")
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--shaped-size-mib", type=int, default=256, help="(b) dataset size")
    p.add_argument("--rate-mb", type=float, default=50.0, help="(b) source uplink, MB/s")
    p.add_argument("--small-files", type=int, default=20_000, help="(d) file count")
    p.add_argument("--rss-sizes-mib", default="1024,8192", help="(f) dataset sizes")
    p.add_argument("--join-peers", type=int, default=8, help="(g) peers")
    p.add_argument("--join-size-mib", type=int, default=256, help="(g) dataset size")
    p.add_argument(
        "--workdir", type=Path, help="where datasets and mirrors go (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--json", type=Path, help="save results here (default bench/results/<time>.json)"
    )
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    p.add_argument("--smoke", action="store_true", help="every scenario once, tiny sizes")
    args = p.parse_args(argv)
    bad = set(args.scenarios) - set(SCENARIOS)
    if bad:
        p.error(f"unknown scenario(s) {''.join(sorted(bad))}; choose from {''.join(SCENARIOS)}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def settings_from(args: argparse.Namespace, workdir: Path) -> Settings:
    s = Settings(
        workdir=workdir,
        repeat=args.repeat,
        tools=tuple(t for t in args.tools.split(",") if t),
        size_mib=args.size_mib,
        peers=args.peers,
        shaped_size_mib=args.shaped_size_mib,
        rate=args.rate_mb * 1e6,
        small_files=args.small_files,
        rss_sizes_mib=tuple(int(x) for x in args.rss_sizes_mib.split(",")),
        join_peers=args.join_peers,
        join_size_mib=args.join_size_mib,
        log=lambda text: print(text, flush=True),
        keep=args.keep,
    )
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(s, key, value)
    return s


def _exit_on_sigterm(signum, _frame) -> None:
    # Unwinds like Ctrl-C, so every deployment's `with` block stops the processes it started.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    missing = [t for t in tools if t != "sift" and shutil.which(t) is None]
    if missing:
        print(
            f"error: {', '.join(missing)} not installed (make tools installs them)", file=sys.stderr
        )
        return 2
    # Daemons start from compiled bytecode, as from an installed package (pip and Nix compile
    # it at install time): with PYTHONDONTWRITEBYTECODE set, an editable checkout would
    # otherwise recompile every module in every daemon it starts (~60 ms of CPU each).
    compileall.compile_dir(Path(sift.__file__).parent, quiet=1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sift-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    s = settings_from(args, workdir)
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            k: v for k, v in vars(s).items() if k not in ("workdir", "log", "_datasets", "trash")
        },
        "scenarios": {},
    }
    broken: list[str] = []
    try:
        for letter in args.scenarios:
            print(f"({letter}) ...", flush=True)
            started = time.monotonic()
            try:
                raw = SCENARIOS[letter](s)
            except (BenchError, OSError, ValueError, KeyError) as exc:
                traceback.print_exc()
                broken.append(f"({letter}): {exc}")
                results["scenarios"][letter] = {"error": str(exc)}
                continue
            raw["seconds"] = time.monotonic() - started
            summary = summarise(raw)
            summary["targets"] = evaluate(letter, raw, summary)
            results["scenarios"][letter] = summary
            print(render_text({letter: summary}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["broken"] = broken
    out = args.json or Path("bench/results") / time.strftime("%Y%m%d-%H%M%S.json", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    ok = {k: v for k, v in results["scenarios"].items() if "error" not in v}
    print("\n" + render_text(ok))
    if args.markdown:
        args.markdown.write_text(
            render_markdown(ok, results) + "\n<!-- targets -->\n\n" + render_targets(ok)
        )
    print(f"saved {out}")
    for line in broken:
        print(f"BROKEN {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
