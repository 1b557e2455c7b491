"""The checkpoint engines: the COLO protocol of xen-colo-protocol.md §3 as two state machines."""
