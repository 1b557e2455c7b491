"""The test rig: the lab, the demo, the guest writer, QEMU processes, a blocking QMP client, the Xen lab.

They run colod from outside, as an administrator or a test would, so the daemon
never imports this package (tests/test_layering.py checks it): what runs in
production cannot depend on what only tests, the demo and the benchmarks need.
"""
