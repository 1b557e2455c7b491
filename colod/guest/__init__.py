"""The guest-state engines: device model and memory."""
