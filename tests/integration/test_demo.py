"""`sift demo` starts a real cluster, shows it converging, and stops every daemon on Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from tests.integration.cluster import tree_state


def test_demo_converges_and_stops_cleanly(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sift",
            "demo",
            "--peers",
            "2",
            "--dir",
            str(tmp_path),
            "--size-mb",
            "2",
            "--headless",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = b""
    try:
        deadline = time.monotonic() + 90
        while b"in sync 2/2" not in output:
            if time.monotonic() > deadline:
                logs = "".join(
                    f"--- {log.name} ---\n{log.read_text()[-3000:]}\n"
                    for log in sorted(tmp_path.glob("*.log"))
                )
                raise AssertionError(f"{output.decode(errors='replace')}\n{logs}")
            chunk = proc.stdout.read1(4096)
            assert chunk, output.decode(errors="replace")
            output += chunk
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        output += rest
    finally:
        # Whatever happened, leave no daemon behind: the demo's children share its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, output.decode(errors="replace")
    text = output.decode()
    assert "master  127.0.0.1:" in text
    assert "stopping" in text
    master = tree_state(tmp_path / "master" / "data")
    assert len(master) > 100  # run directories, CSVs, metadata, the binary file
    for peer in ("peer1", "peer2"):
        assert tree_state(tmp_path / peer / "data") == master
    # The daemons are gone: their logs end with a clean stop.
    assert "master stopped" in (tmp_path / "master.log").read_text()
    assert "peer stopped" in (tmp_path / "peer1.log").read_text()
