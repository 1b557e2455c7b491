# -*- test-case-name: tests.devices.test_cli,tests.test_bad_config,tests.test_tap -*-
"""The ``colod`` command: tools for administrators, next to the ``twistd colod`` daemon.

``colod qemu-args --role secondary --config FILE`` prints the QEMU arguments
colod needs: the device-model options, then one ``-blockdev`` per configured
disk part, and with NBD under TLS (the default) the objects its TLS needs, for
which it lays out ``<state_dir>/qemu-tls`` (colod.devices.nbd_tls); an option and its
value per line, shell-quoted.

``colod failover --config FILE DOMAIN`` tells the secondary, which waits for
an operator's decision after losing its primary (colod.failover.policy),
to take the guest over; it refuses when the domain's status says no such
decision is awaited.

``colod check-config FILE [--role ROLE]`` validates FILE exactly as
``twistd colod`` does before it starts anything (for systemd's
``ExecStartPre=``): one line naming the file, the key and the problem.

``colod make-certs --dir DIR NODE...`` makes a lab's CA and a certificate for
each node (colod.certs) and prints each node's ``[tls]`` keys.

Exit status: 0 on success, 1 on a configuration (or certificate) error, 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from colod import certs, config, tap, tls
from colod.config import ConfigError
from colod.devices import nbd_tls
from colod.engine.secondary import SecondaryState
from colod.failover.policy import OperatorRequest
from colod.qemu_args import device_model_args, json_args, qemu_args
from colod.role import Role


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colod", description="colod administration tools")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    args = commands.add_parser(
        "qemu-args", help="print the QEMU arguments for a domain's device model and replicated disks",
        description="Print the arguments the device model of DOMAIN needs on this role: options that "
        "make its device state loadable, then -blockdev "
        "arguments: the quorum on the primary; the disk, its overlays, the replication node and the "
        "quorum on the secondary.")
    args.add_argument("--role", required=True, choices=[role.value for role in Role])
    args.add_argument("--config", default=config.DEFAULT_PATH, metavar="FILE",
                      help=f"colod's configuration (default {config.DEFAULT_PATH})")
    args.add_argument("--domain", metavar="NAME", help="the domain (needed when FILE has several)")
    args.add_argument("--device-model", action="store_true",
                      help="secondary without Xen: the arguments of the separate device-model QEMU "
                      "(device_model_socket), which waits with -incoming defer, instead")
    failover = commands.add_parser(
        "failover", help="take a lost primary's guest over on this secondary, once you know the primary "
        "is down", description="Tell this node's colod, whose secondary lost its primary and waits for an "
        "operator (failover policy manual, or a fence that failed), to run the guest from its last "
        "checkpoint. Make sure first that the primary's guest does not run: two running copies of a "
        "guest are worse than none.")
    failover.add_argument("--config", default=config.DEFAULT_PATH, metavar="FILE",
                          help=f"colod's configuration (default {config.DEFAULT_PATH})")
    failover.add_argument("domain", metavar="DOMAIN", help="the domain's name, as the configuration says")
    check = commands.add_parser(
        "check-config", help="validate a configuration file exactly as the daemon does",
        description="Validate FILE exactly as twistd colod does before it starts anything; print one line "
        "saying it is good, or naming the key and the problem (exit status 1).")
    check.add_argument("file", metavar="FILE", help="the configuration to check")
    check.add_argument("--role", choices=[role.value for role in Role],
                       help="the role the daemon will be given with --role (default: the file's)")
    make = commands.add_parser(
        "make-certs", help="make a lab's CA and a certificate for each node (not for production)",
        description="Make a CA in DIR (or reuse the one there) and, for each NODE, a directory DIR/NODE "
        "with the CA's certificate and the node's certificate and key, named as QEMU's tls-creds-x509 "
        "wants them; print each node's [tls] keys. The CA's key stays in DIR: keep it off the nodes.")
    make.add_argument("--dir", required=True, type=Path, metavar="DIR", help="where to put the files")
    make.add_argument("--days", type=int, default=certs.DAYS, help=f"validity (default {certs.DAYS})")
    make.add_argument("nodes", nargs="+", metavar="NODE", help="a node_name, as colod's configuration says")
    return parser


def _make_certs(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    for node in options.nodes:
        problem = config.name_problem(node) or tls.name_problem(node)
        if problem is not None:
            parser.error(f"node name {node!r} {problem}")
    if options.days < 1:
        parser.error("--days must be at least 1")
    directory = options.dir.resolve()
    for node, node_dir in certs.make(directory, options.nodes, options.days).items():
        print(f"# {node}\n[tls]\nca = \"{node_dir / certs.CA_CERT}\"\n"
              f"certificate = \"{node_dir / certs.CERT}\"\nkey = \"{node_dir / certs.KEY}\"")


def _failover(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    loaded = config.load(options.config)
    names = [d.name for d in loaded.domains]
    if options.domain not in names:
        parser.error(f"no domain {options.domain!r} in {options.config} (it has: {', '.join(names)})")
    status_path = os.path.join(loaded.state_dir, options.domain, "status.json")
    try:
        with open(status_path, encoding="utf-8") as f:
            state = json.load(f).get("state")
    except (OSError, ValueError) as e:
        raise FailoverError(f"cannot read {status_path} ({e}): is colod running here?") from None
    if state != SecondaryState.AWAITING_OPERATOR:
        raise FailoverError(f"domain {options.domain} is not waiting for an operator's decision (its state "
                            f"is {state!r}, from {status_path}); nothing was asked")
    request = OperatorRequest(loaded.state_dir, options.domain)
    request.write(f"colod failover by {getpass.getuser()}, pid {os.getpid()}")
    print(f"domain {options.domain}: takeover requested ({request.path}); colod takes it up within a second "
          f"and says so in its log and {status_path}")


class FailoverError(Exception):
    """colod failover found nothing to ask, or could not ask."""


def _qemu_args(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    role = Role(options.role)
    loaded = config.load(options.config, role)
    names = [d.name for d in loaded.domains]
    if options.domain is None:
        if len(names) > 1:
            parser.error(f"{options.config} has several domains; pick one with --domain ({', '.join(names)})")
        domain = loaded.domains[0]
    else:
        found = [d for d in loaded.domains if d.name == options.domain]
        if not found:
            parser.error(f"no domain {options.domain!r} in {options.config} (it has: {', '.join(names)})")
        domain = found[0]
    if domain.xen is not None:
        parser.error(f"domain {domain.name!r} is a Xen domain: libxl starts its QEMU (docs/xen.md)")
    if options.device_model:
        if role is not Role.SECONDARY:
            parser.error("--device-model is for the secondary's separate device model")
        args = device_model_args(incoming=True)
    else:
        args = qemu_args(domain, role)
        if domain.nbd_tls is not None:
            nbd_tls.lay_out(loaded)
            args += json_args("-object", nbd_tls.qemu_objects(loaded, domain))
    print("\n".join(shlex.join(args[i:i + 2]) for i in range(0, len(args), 2)))


def _check_config(options: argparse.Namespace) -> None:
    loaded = tap.load(options.file, options.role)
    domains = ", ".join(domain.name for domain in loaded.domains)
    print(f"{loaded.path}: good: {loaded.role} {loaded.node_name} protecting {domains}; "
          f"control socket {loaded.control_socket}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    try:
        if options.command == "make-certs":
            _make_certs(parser, options)
        elif options.command == "failover":
            _failover(parser, options)
        elif options.command == "check-config":
            _check_config(options)
        else:
            _qemu_args(parser, options)
    except (ConfigError, certs.CertError, FailoverError, OSError) as e:
        print(f"colod: error: {e}", file=sys.stderr)
        return 1
    return 0
