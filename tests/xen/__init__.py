"""Tests for colod.xen: the libxl-save-helper message codec and its Twisted driver."""
