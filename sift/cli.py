"""The `sift` command: master and peer daemons, status, and a local demo cluster.

Exit codes: 0 success or clean shutdown, 1 runtime failure (unreachable, refused, crashed),
2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from sift import __version__
from sift.config import Address, ConfigError, load_master_config, load_peer_config
from sift.control.client import ControlClosed, ControlError, control_call
from sift.control.server import SocketInUse
from sift.malloc_tuning import tune_malloc
from sift.net.tls import TLSError, client_context
from sift.protocol import AuthenticationError, ProtocolError
from sift.state import StateError
from sift.status import fetch_status, format_status, to_json

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("sift")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)` on uvloop; SIGINT and SIGTERM set `stop` for a clean shutdown."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(wrapper())


def _fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"sift: {message}", file=sys.stderr)
    return code


def _run_daemon(
    load: Callable[[str], object],
    make: Callable[[object], object],
    path: str,
    log_level: str | None,
    refusals: tuple[type[Exception], ...] = (),
) -> int:
    """Load the config and build the daemon (one-line error, exit 2, on a bad config or state),
    then run it until SIGINT/SIGTERM. Binding happens first in `run`, so an OSError before the
    daemon is listening is a bad bind address (port in use, address not local)."""
    try:
        config = load(path)
        if log_level is None:  # no --log-level: the config's log_level decides
            logging.getLogger().setLevel(config.log_level.upper())
        daemon = make(config)
    except (ConfigError, StateError, *refusals) as exc:
        return _fail(str(exc), EXIT_USAGE)
    tune_malloc()
    try:
        run_until_signalled(daemon.run)
    except SocketInUse as exc:
        return _fail(str(exc), EXIT_USAGE)
    except OSError as exc:
        if daemon.server is None:
            return _fail(f"cannot listen on {config.bind_addr}: {exc.strerror or exc}", EXIT_USAGE)
        return _fail(f"stopped by an error: {exc}")
    return EXIT_OK


# Each command imports only what it runs: a peer's imports are part of its first sync's time
# (four peers starting at once on two cores wait for each other's), and the master's (the
# scanner, the chunk pool, fastcdc and the click it imports) added about 9 ms to each.


def cmd_master_start(args: argparse.Namespace) -> int:
    from sift.master.daemon import MasterDaemon  # noqa: PLC0415 (see above)

    load = functools.partial(load_master_config, psk_file=args.psk_file)
    return _run_daemon(load, MasterDaemon, args.config, args.log_level)


def cmd_peer_start(args: argparse.Namespace) -> int:
    from sift.peer.daemon import NotOurDirectory, PeerDaemon  # noqa: PLC0415 (see above)

    load = functools.partial(load_peer_config, psk_file=args.psk_file)
    return _run_daemon(load, PeerDaemon, args.config, args.log_level, (NotOurDirectory,))


def cmd_status(args: argparse.Namespace) -> int:
    if args.control is not None:
        return _status_from_socket(args.control, args.json)
    if args.master is None:
        return _fail("say which daemon: --master HOST:PORT or --control SOCKET", EXIT_USAGE)
    psk = args.psk if args.psk is not None else os.environ.get("SIFT_PSK")
    if not psk:
        return _fail("no pre-shared key: pass --psk or set SIFT_PSK", EXIT_USAGE)
    try:
        addr = Address.parse(args.master)
    except ValueError as exc:
        return _fail(f"--master: {exc}", EXIT_USAGE)
    try:
        tls = _status_tls(args)
    except (ConfigError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        status = asyncio.run(fetch_status(addr.host, addr.port, psk.encode(), tls=tls))
    except AuthenticationError as exc:
        return _fail(f"master {addr} refused the key: {exc}")
    except TLSError as exc:
        return _fail(f"master {addr}: {exc}")
    except TimeoutError:
        return _fail(f"master {addr} did not answer in time")
    except (OSError, ConnectionError) as exc:
        return _fail(f"cannot reach master {addr}: {exc.strerror or exc}")
    except ProtocolError as exc:
        return _fail(f"master {addr} spoke nonsense: {exc}")
    print(to_json(status) if args.json else format_status(status))
    return EXIT_OK


def _status_from_socket(path: str, as_json: bool) -> int:
    try:
        status = asyncio.run(control_call(path, "status"))
    except FileNotFoundError:
        return _fail(f"no control socket at {path} (is the daemon running?)")
    except ConnectionRefusedError:
        return _fail(f"nothing listens on {path} (the daemon is not running)")
    except PermissionError:
        return _fail(f"not allowed to open {path} (run as the daemon's user)")
    except ControlError as exc:
        return _fail(f"{path}: {exc.message}")
    except (ControlClosed, OSError, TimeoutError) as exc:
        return _fail(f"{path}: {exc}")
    print(to_json(status) if as_json else format_status(status))
    return EXIT_OK


def _status_tls(args: argparse.Namespace):
    """The TLS context `sift status` dials with, from --tls/--tls-ca/--tls-cert/--tls-key."""
    files = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    if not args.tls and not any(files.values()):
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together (a client certificate needs both)")
    for flag, path in files.items():
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{flag} '{path}' is not a readable file")
    ca, cert, key = (None if p is None else Path(p) for p in files.values())
    return client_context(ca, cert, key)


def cmd_demo(args: argparse.Namespace) -> int:
    from sift.demo import run_demo  # noqa: PLC0415 (as for the daemons above)

    return run_demo(
        peers=args.peers, base_dir=args.dir, size_mb=args.size_mb, headless=args.headless
    )


def _add_psk_file_flag(start: argparse.ArgumentParser) -> None:
    start.add_argument(
        "--psk-file",
        metavar="FILE",
        help="read the pre-shared key from FILE instead of the config's psk/psk_file "
        "(for service managers, e.g. systemd's %%d/psk credential)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sift",
        description="Keep many machines byte-identical to one authoritative directory.",
    )
    parser.add_argument("--version", action="version", version=f"sift {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: the config's log_level, else info)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    master = sub.add_parser("master", help="run the master daemon")
    master_sub = master.add_subparsers(dest="action", required=True)
    start = master_sub.add_parser("start", help="watch watched_dir and serve peers (foreground)")
    start.add_argument("--config", required=True, help="path to master.toml")
    _add_psk_file_flag(start)
    start.set_defaults(func=cmd_master_start)

    peer = sub.add_parser("peer", help="run a peer daemon")
    peer_sub = peer.add_subparsers(dest="action", required=True)
    start = peer_sub.add_parser("start", help="mirror the master into local_dir (foreground)")
    start.add_argument("--config", required=True, help="path to peer.toml")
    _add_psk_file_flag(start)
    start.set_defaults(func=cmd_peer_start)

    status = sub.add_parser(
        "status", help="show a master's manifest and peers, or a daemon's state"
    )
    which = status.add_mutually_exclusive_group(required=True)
    which.add_argument("--master", metavar="HOST:PORT", help="ask a master over the network")
    which.add_argument(
        "--control", metavar="SOCKET", help="ask the local daemon behind this control socket"
    )
    status.add_argument("--psk", help="pre-shared key for --master (default: $SIFT_PSK)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--tls", action="store_true", help="connect over TLS (implied by the --tls-* options)"
    )
    status.add_argument(
        "--tls-ca", metavar="FILE", help="verify the master's certificate against this CA"
    )
    status.add_argument(
        "--tls-cert", metavar="FILE", help="client certificate, for a master with tls_ca set"
    )
    status.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="run a master and peers on 127.0.0.1 over sample data")
    demo.add_argument("--peers", type=int, default=2, help="number of peers (default 2)")
    demo.add_argument("--dir", default=None, help="where to put the demo (default: a temp dir)")
    demo.add_argument(
        "--size-mb", type=int, default=32, help="size of the sample binary file in MB (default 32)"
    )
    demo.add_argument(
        "--headless",
        action="store_true",
        help="print a one-line status instead of opening the sift-tui console",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level or "info")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
