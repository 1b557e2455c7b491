"""Failover's tie-breaker: which host may run a domain as primary, decided by etcd so that never two do."""
