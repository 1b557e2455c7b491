"""colod: a COLO fault-tolerance daemon for pairs of Xen dom0s."""

__version__ = "0.1.0"
