# -*- test-case-name: tests.test_config -*-
"""A node's role in its pair, one enum from the configuration down to the hello's role byte.

A StrEnum: a role is its own name wherever text is wanted (the log,
status.json, ``colod qemu-args --role``), and compares equal to it.
"""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """The configuration's ``role``: which copy of the guest this node keeps."""

    PRIMARY = "primary"
    SECONDARY = "secondary"
