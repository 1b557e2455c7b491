"""Failover: who may take a guest over when its primary is lost (docs/engine.md, "Failover").

A secondary whose link ended in a way that leaves the primary's fate unknown
(colod.engine.link_end) asks its policy (colod.failover.policy) before it
runs the guest; a policy that cannot be sure says no, and the operator decides.
"""
