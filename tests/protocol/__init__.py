"""Tests for colod.protocol: the checkpoint stream codec and the peer link."""
