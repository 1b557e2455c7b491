"""
Run Xen's own verify-stream-v2 over many stream files in one process.

Usage: PYTHONPATH=<xen lib/python> python xen_verify_batch.py VERIFY_STREAM_V2 < paths.json
Prints a JSON list of exit statuses, one per path, exactly as the script's
read_stream() returns them (0 valid, 1 stream error, 2 script error).  Kept
out of the test process so that Xen's modules never mix with ours.
"""

import importlib.machinery
import importlib.util
import json
import sys


def main() -> None:
    loader = importlib.machinery.SourceFileLoader("verify_stream_v2", sys.argv[1])
    spec = importlib.util.spec_from_loader("verify_stream_v2", loader)
    tool = importlib.util.module_from_spec(spec)
    loader.exec_module(tool)
    tool.quiet = True
    statuses = []
    for path in json.load(sys.stdin):
        with open(path, "rb") as tool.fin:
            statuses.append(tool.read_stream("libxl"))
    json.dump(statuses, sys.stdout)


if __name__ == "__main__":
    main()
