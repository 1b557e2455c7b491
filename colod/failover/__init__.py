"""Failover: who may run a domain's guest when its primary is lost, so that never two hosts do.

A secondary whose link ended in a way that leaves the primary's fate unknown
(colod.engine.link_end) asks its policy (colod.failover.policy) before it
runs the guest; a policy that cannot be sure says no, and the operator
decides.  The etcd tie-breaker (colod.failover.etcd, .lease, .ownership)
decides which host may run a domain as primary through etcd's leases and
transactions; the etcd policy (.etcd_policy) puts it to work on both nodes,
and a guard process (.guard, .guarding) pauses a primary's guest should its
colod die or freeze.
"""
