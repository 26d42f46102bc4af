"""`sift demo`: a master and N peers on 127.0.0.1 over a generated sample dataset.

Every daemon is a real `sift` process with its own config file, so what the demo shows is what an
operator gets. Ctrl-C stops them all cleanly.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sift.libc import libc_function
from sift.net.ports import free_port
from sift.status import fetch_status, human_size

PR_SET_PDEATHSIG = 1
_prctl = libc_function("prctl", [ctypes.c_int, ctypes.c_ulong])  # looked up before any fork


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the demo dies, so even a killed
    demo leaves no daemon behind."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def make_sample_dataset(root: Path, *, size_mb: int = 32, runs: int = 3, seed: int = 7) -> int:
    """A tree shaped like an experiment's output: run directories with many small CSVs, a JSON
    metadata file, and one binary file of `size_mb` MB. Returns the bytes written."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    total = 0
    meta = {
        "experiment": "sift-demo",
        "instrument": "beamline-7",
        "created": "2026-11-26T00:00:00Z",
        "runs": [],
    }
    for run in range(1, runs + 1):
        run_dir = root / "runs" / f"run-{run:03d}"
        (run_dir / "spectra").mkdir(parents=True, exist_ok=True)
        for i in range(40):
            rows = ["t,channel,counts"] + [
                f"{t},{rng.randrange(64)},{rng.randrange(100000)}" for t in range(200)
            ]
            data = ("\n".join(rows) + "\n").encode()
            (run_dir / "spectra" / f"spectrum-{i:04d}.csv").write_bytes(data)
            total += len(data)
        log = "".join(f"[{t:06d}] detector ok, rate={rng.random():.4f}\n" for t in range(500))
        (run_dir / "acquisition.log").write_text(log)
        total += len(log)
        meta["runs"].append({"id": run, "spectra": 40, "path": f"runs/run-{run:03d}"})
    (root / "calibration").mkdir(exist_ok=True)  # an empty directory syncs too
    text = json.dumps(meta, indent=2) + "\n"
    (root / "metadata.json").write_text(text)
    total += len(text)
    with open(root / "detector-frames.h5", "wb") as f:
        for _ in range(size_mb):
            # Incompressible and without repeats, like real detector data: no chunk dedups.
            data = rng.randbytes(1 << 20)
            f.write(data)
            total += len(data)
    return total


def _write_config(path: Path, values: dict) -> None:
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def run_demo(
    peers: int = 2, base_dir: str | None = None, size_mb: int = 32, headless: bool = False
) -> int:
    if peers < 1:
        print("sift demo: --peers must be at least 1", file=sys.stderr)
        return 2
    temp = base_dir is None
    base = Path(base_dir or tempfile.mkdtemp(prefix="sift-demo-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    psk = secrets.token_urlsafe(24)
    master_dir = base / "master" / "data"
    if not master_dir.exists():
        print(f"generating sample dataset in {master_dir} ...")
        size = make_sample_dataset(master_dir, size_mb=size_mb)
        print(f"  {human_size(size)} written")
    port = free_port()
    (base / "master").mkdir(exist_ok=True)
    _write_config(
        base / "master" / "master.toml",
        {
            "watched_dir": str(master_dir),
            "bind_addr": f"127.0.0.1:{port}",
            "psk": psk,
            "state_dir": str(base / "master" / "state"),
        },
    )
    procs: list[tuple[str, subprocess.Popen]] = []
    logs = []

    def spawn(name: str, args: list[str]) -> None:
        log_file = open(base / f"{name}.log", "ab")  # noqa: SIM115 (closed at shutdown)
        logs.append(log_file)
        proc = subprocess.Popen(
            [sys.executable, "-m", "sift", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 (spawned before any thread starts)
        )
        procs.append((name, proc))

    spawn("master", ["master", "start", "--config", str(base / "master" / "master.toml")])
    for i in range(1, peers + 1):
        pdir = base / f"peer{i}"
        pdir.mkdir(exist_ok=True)
        _write_config(
            pdir / "peer.toml",
            {
                "master_addr": f"127.0.0.1:{port}",
                "psk": psk,
                "local_dir": str(pdir / "data"),
                "bind_addr": f"127.0.0.1:{free_port()}",
            },
        )
        spawn(f"peer{i}", ["peer", "start", "--config", str(pdir / "peer.toml")])

    master_socket = base / "master" / "state" / "control.sock"
    if not headless and not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("sift demo: no terminal for the console; showing the plain status line instead")
        headless = True

    print(f"\nsift demo in {base}")
    print(f"  master  127.0.0.1:{port}  watching {master_dir}  (log: {base / 'master.log'})")
    for i in range(1, peers + 1):
        print(f"  peer{i}   mirror in {base / f'peer{i}' / 'data'}  (log: {base / f'peer{i}.log'})")
    print(f"\n  status: SIFT_PSK={psk} sift status --master 127.0.0.1:{port}")
    print(f"  console: sift-tui --socket {master_socket}")
    print("  edit files under the master's data directory and watch the peers follow.")
    print("  Ctrl-C stops the demo.\n" if headless else "  Quitting the console stops the demo.\n")

    stop = {"flag": False}
    previous = signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("flag", True))
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    code = 0
    try:
        if not headless:
            code = _console(master_socket, procs, base)
        while headless and not stop["flag"]:
            if _report_dead(procs, base):
                code = 1
                break
            print("\r" + _status_line(port, psk.encode(), peers), end="", flush=True)
            time.sleep(1.0)
    finally:
        signal.signal(signal.SIGINT, previous)
        print("\nstopping ...")
        for _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for _, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in logs:
            f.close()
        if temp:
            shutil.rmtree(base, ignore_errors=True)
    return code


def _console(master_socket: Path, procs: list[tuple[str, subprocess.Popen]], base: Path) -> int:
    """Run sift-tui on the demo's master in this terminal until the user quits it. A separate
    process: the headless package never imports textual."""
    subprocess.run([sys.executable, "-m", "sift_tui", "--socket", str(master_socket)], check=False)
    return 1 if _report_dead(procs, base) else 0


def _report_dead(procs: list[tuple[str, subprocess.Popen]], base: Path) -> bool:
    """Say which daemon exited (and where its log is), if one did."""
    dead = [(n, p.returncode) for n, p in procs if p.poll() is not None]
    if dead:
        name, code = dead[0]
        print(
            f"\nsift demo: {name} exited with code {code}; see {base / (name + '.log')}",
            file=sys.stderr,
        )
    return bool(dead)


def _status_line(port: int, psk: bytes, peers: int) -> str:
    try:
        status = asyncio.run(fetch_status("127.0.0.1", port, psk, timeout=2.0))
    except Exception:
        return "waiting for the master ...".ljust(100)
    complete = sum(1 for p in status["peers"] if p["complete"])
    return (
        f"version {status['manifest_version']} | {status['files']} files, "
        f"{human_size(status['bytes'])} | peers connected {status['connected_peers']}/{peers}, "
        f"in sync {complete}/{peers} | master sent {human_size(status['bytes_sent'])}"
    ).ljust(100)
