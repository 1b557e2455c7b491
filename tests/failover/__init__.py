"""Tests of colod.failover, against a real etcd-server (colod.testing.etcd); its timing on a fake clock."""
