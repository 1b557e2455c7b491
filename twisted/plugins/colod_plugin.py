"""The twistd dropin for colod: names colod.tap, imports nothing else."""

from twisted.application.service import ServiceMaker

colod = ServiceMaker(
    "colod",
    "colod.tap",
    "COLO fault-tolerance daemon for a pair of Xen dom0s",
    "colod",
)
