"""Tests of the control socket, colodctl and the metrics endpoint."""
