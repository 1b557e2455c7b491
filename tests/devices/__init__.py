"""Tests of colod.devices, colod.qemu_args and colod.cli, against real QEMU."""
