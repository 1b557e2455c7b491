# -*- test-case-name: tests.control.test_colodctl -*-
"""``colodctl``: ask a running colod over its control socket (colod.control).

``colodctl status [--json] [DOMAIN]``, ``checkpoint DOMAIN``, ``failover
DOMAIN``, ``drop DOMAIN``, ``pause DOMAIN``, ``resume DOMAIN``, ``watch`` and
``log-level LEVEL``; docs/operations.md says what each does.  The socket is
``--socket PATH``, or the ``control_socket`` of ``--config FILE`` (default
/etc/colod/colod.toml).

Exit status: 0 done; 1 the daemon refused or failed the request (one line
saying why); 2 a usage error; 3 the daemon could not be asked (no socket,
nobody listening, no answer within --timeout, a configuration that cannot
be read).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from colod import config
from colod.control.client import Unreachable, ask
from colod.control.protocol import Command, ProtocolError, RequestError

#: Exit statuses.
DONE, REFUSED, USAGE, UNREACHABLE = 0, 1, 2, 3
#: Seconds colodctl waits for an answer by default: a checkpoint's whole deadline with the default
#: configuration (colod.service.checkpoint_timeout) and the interval.
TIMEOUT = 90.0
#: Seconds between two refreshes of ``watch``.
WATCH_INTERVAL = 1.0
#: What clears a terminal and puts the cursor at its top.
CLEAR = "\x1b[H\x1b[2J"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colodctl", description="Ask a running colod, over its control socket.",
        epilog="Exit status: 0 done, 1 refused by colod, 2 usage error, 3 colod could not be asked.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the control socket (default: --config's)")
    where.add_argument("--config", metavar="FILE", default=config.DEFAULT_PATH,
                       help=f"colod's configuration, for its control_socket (default {config.DEFAULT_PATH})")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for an answer (default {TIMEOUT:g})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="say how each domain (or DOMAIN) is protected")
    status.add_argument("--json", action="store_true", help="the daemon's answer as JSON")
    status.add_argument("domain", nargs="?", metavar="DOMAIN")
    for name, text in ((Command.CHECKPOINT, "checkpoint DOMAIN now; waits until it is complete"),
                       (Command.FAILOVER, "take DOMAIN over here now (needs [failover] policy = manual)"),
                       (Command.DROP, "stop protecting DOMAIN; its guest keeps running where it runs"),
                       (Command.PAUSE, "start no checkpoint of DOMAIN on the interval until resume"),
                       (Command.RESUME, "checkpoint DOMAIN on the interval again, starting now")):
        commands.add_parser(name.value, help=text, description=text).add_argument("domain", metavar="DOMAIN")
    watch = commands.add_parser("watch", help="a live view of every domain, refreshed until Ctrl-C")
    watch.add_argument("--interval", type=float, default=WATCH_INTERVAL, metavar="SECONDS",
                       help=f"seconds between refreshes (default {WATCH_INTERVAL:g})")
    watch.add_argument("--count", type=int, metavar="N", help="stop after N refreshes")
    level = commands.add_parser("log-level", help="log from LEVEL up from now on")
    level.add_argument("level", metavar="LEVEL", choices=config.LOG_LEVELS)
    return parser


def _socket(options: argparse.Namespace) -> str:
    if options.socket is not None:
        return str(options.socket)
    try:
        return config.load(options.config).control_socket
    except config.ConfigError as e:
        raise Unreachable(f"cannot find colod's control socket: {e} (or give --socket)") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if options.timeout <= 0 or (options.command == "watch" and options.interval <= 0):
        parser.error("--timeout and --interval must be positive")
    try:
        path = _socket(options)
        if options.command == "watch":
            return _watch(path, options)
        command = Command(options.command)
        arguments = {key: getattr(options, key) for key in ("domain", "level")
                     if getattr(options, key, None) is not None}
        result = ask(path, command, options.timeout, **arguments)
    except RequestError as e:
        print(f"colodctl: {e.code}: {e.message}", file=sys.stderr)
        return REFUSED
    except (Unreachable, ProtocolError) as e:
        print(f"colodctl: {e}", file=sys.stderr)
        return UNREACHABLE
    except KeyboardInterrupt:
        return DONE
    if command is Command.STATUS:
        print(json.dumps(result, indent=1) if options.json else status_text(result))
    elif command is Command.CHECKPOINT:
        print(f"domain {result['domain']}: checkpoint {result['checkpoint']} complete")
    elif command is Command.LOG_LEVEL:
        print(f"log level {result['level']} (was {result['was']})")
    else:
        print(f"domain {result['domain']}: {command} done (at checkpoint {result['checkpoint']}, "
              f"{result['step'].replace('_', ' ')})")
    return DONE


def _watch(path: str, options: argparse.Namespace) -> int:
    """Show every domain's line again every interval (clearing the screen on a terminal)."""
    shown = 0
    while options.count is None or shown < options.count:
        if shown:
            time.sleep(options.interval)
        try:
            view = watch_text(ask(path, Command.STATUS, options.timeout))
        except (Unreachable, ProtocolError, RequestError) as e:
            view = f"colodctl: {e}"
        stamp = datetime.now().strftime("%H:%M:%S")
        print(f"{CLEAR if sys.stdout.isatty() else ''}colodctl watch {path} at {stamp} (Ctrl-C ends)\n{view}",
              flush=True)
        shown += 1
    return DONE


# -- the human forms ----------------------------------------------------------------


def status_text(result: dict[str, Any]) -> str:
    """``colodctl status``'s text: each domain's block, then the daemon's line."""
    daemon = result["colod"]
    blocks = [_domain_text(domain) for domain in result["domains"]]
    blocks.append(f"colod {daemon['version']} (pid {daemon['pid']}) on {daemon['node']}, {daemon['config']}; "
                  f"log level {daemon['log_level']}")
    return "\n".join(blocks)


def _domain_text(s: dict[str, Any]) -> str:
    checkpoint, pause, peer = s["checkpoint"], s["pause"], s["peer"]
    role = s["role"] + (" (took over)" if s["failed_over"] else "")
    since = f" since {_clock(s['state_since'])}" if s["state_since"] is not None else ""
    paused = "; checkpoints PAUSED" if s["checkpoints_paused"] else ""
    link = (f"linked at {peer['address']}, round trip {_ms(peer['round_trip_ms'])}" if peer["linked"]
            else "down")
    triggers = ", ".join(f"{key} {value}" for key, value in sorted(checkpoint["by_trigger"].items()))
    last = f", {_age(checkpoint['age_s'])} ago" if checkpoint["at"] is not None else ""
    if checkpoint["bytes"] is not None:
        last += f", {_size(checkpoint['bytes'])} in {checkpoint['pages']} pages"
    devices = "; ".join(f"{d['name']} {'healthy' if d['healthy'] else 'UNHEALTHY: ' + d['detail']}"
                        for d in s["devices"]) or "none set up"
    lines = [
        f"{s['domain']} on {s['node']}: {role}, {s['state']}{since}{paused}",
        f"  protected   {'yes' if s['protected'] else 'NO'} (step {s['step']}, epoch {s['epoch']})",
        f"  peer        {peer['node']}: {link}",
        f"  checkpoint  {checkpoint['number']}{last}" + (f" ({triggers})" if triggers else ""),
        f"  pauses      last {_ms(pause['last_ms'])}, p50 {_ms(pause['p50_ms'])}, p99 {_ms(pause['p99_ms'])};"
        f" {pause['count']} since the start",
        f"  devices     {devices}",
        f"  guest       {s['guest']}",
        f"  qemu        {s['qemu']}",
        f"  error       {s['error'] or 'none'}",
    ]
    return "\n".join(lines)


def watch_text(result: dict[str, Any]) -> str:
    """``colodctl watch``'s table: a line per domain."""
    rows = [("DOMAIN", "ROLE", "PEER", "EPOCH", "STATE", "LAST CK", "P50", "P99", "DIRTY", "ERROR")]
    for s in result["domains"]:
        peer, checkpoint, pause = s["peer"], s["checkpoint"], s["pause"]
        link = f"{peer['node']} {'up ' + _ms(peer['round_trip_ms']) if peer['linked'] else 'down'}"
        state = s["state"] + (" PAUSED" if s["checkpoints_paused"] else "")
        rows.append((s["domain"], s["role"], link, str(s["epoch"]), state,
                     f"#{checkpoint['number']} {_age(checkpoint['age_s'])}", _ms(pause["p50_ms"]),
                     _ms(pause["p99_ms"]), _size(checkpoint["bytes"]), s["error"] or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
                     + "  " + row[-1] for row in rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms" if value >= 0.1 else f"{value * 1000:.0f} us"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count //= 1024
    return f"{count} GiB"


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
