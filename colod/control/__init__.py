"""Operating a running colod: its control socket (protocol, server, client) and what requests do."""
