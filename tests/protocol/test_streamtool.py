"""colod-stream: exit statuses, the single error line, and dump output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from colod.protocol import Channel, Checkpointed, CheckpointEnd
from colod.streamtool import main

from .streams import colo_back, colo_main, encode, pages, plain_hvm, remus_main


@pytest.fixture
def colo(tmp_path: Path) -> Path:
    path = tmp_path / "colo.main"
    path.write_bytes(encode(colo_main(2)))
    return path


def test_verify_valid(colo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(colo)]) == 0
    assert capsys.readouterr().out == f"valid main stream: {len(colo_main(2))} records\n"


def test_verify_back_channel(tmp_path: Path) -> None:
    path = tmp_path / "colo.back"
    path.write_bytes(encode(colo_back(2), Channel.BACK))
    assert main(["verify", str(path), "--channel", "back"]) == 0
    assert main(["verify", str(path)]) == 1


def test_verify_invalid_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray(encode(plain_hvm()))
    data[24 + 15] = 9  # low byte of the big-endian libxc image version at offset 36
    path = tmp_path / "bad"
    path.write_bytes(bytes(data))
    assert main(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == "offset 36: libxc image version 9, expected 2 or 3\n"


@pytest.mark.parametrize(("argv", "said"), [
    ([], "colod-stream: error: the following arguments are required: command"),
    (["verify"], "colod-stream verify: error: the following arguments are required: file"),
    (["frobnicate", "x"], "colod-stream: error: argument command: invalid choice: 'frobnicate' "),
    (["verify", "x", "--channel", "side"],
     "colod-stream verify: error: argument --channel: invalid choice: 'side' "),
])
def test_usage_errors(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit status 2, and argparse's last line names the problem (the choices' format varies by Python)."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(said)


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing"
    assert main(["verify", str(missing)]) == 2
    said = f"colod-stream: error: cannot read {missing}: No such file or directory\n"
    assert capsys.readouterr().err == said


def test_dump_text(colo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(colo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(colo_main(2))
    assert lines[0].split() == ["0", "libxl", "STREAM_HEADER", "16", "legacy=False"]
    page_line = next(line for line in lines if "PAGE_DATA" in line)
    assert page_line.split()[1:] == ["libxc", "PAGE_DATA", str(8 + 3 * 8 + 3 * 4096), "count=3",
                                     "pfns=0x100-0x102", "types=NOTAB:3"]
    assert any(line.split()[1:4] == ["libxl", "CHECKPOINT_STATE", "4"] for line in lines)


def test_dump_json(colo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dump", str(colo), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    state = next(row for row in rows if row["type"] == "CHECKPOINT_STATE")
    assert state["namespace"] == "libxl" and state["length"] == 4 and state["fields"] == {"id": "NEW"}
    offsets = [row["offset"] for row in rows]
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_console_script_streams_large_input(tmp_path: Path) -> None:
    """The installed entry point reads from stdin in chunks; exit status 0."""
    data = encode(colo_main(0))
    big = encode([*colo_main(0)[:7], *[pages(64)] * 40])  # 10 MiB of pages, left open: invalid
    script = [sys.executable, "-m", "colod.streamtool", "verify", "-"]
    assert subprocess.run(script, input=data, capture_output=True, check=False).returncode == 0
    result = subprocess.run(script, input=big, capture_output=True, check=False)
    assert result.returncode == 1
    assert result.stderr.decode().startswith(f"offset {len(big)}: stream ends in the libxc stream")


@pytest.fixture
def remus(tmp_path: Path) -> Path:
    """A generated Remus stream (xen-colo-protocol.md 11.1): initial checkpoint and 5 more, then EOF."""
    path = tmp_path / "remus.main"
    path.write_bytes(encode(remus_main(5), checkpointed=Checkpointed.REMUS))
    return path


@pytest.mark.parametrize("option", [[], ["--checkpointed", "auto"], ["--checkpointed", "remus"]])
def test_verify_remus(remus: Path, option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(remus), *option]) == 0
    assert capsys.readouterr().out == f"valid main stream: {len(remus_main(5))} records\n"


def test_verify_remus_as_colo(remus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(remus), "--checkpointed", "colo"]) == 1
    records = remus_main(5)
    offset = len(encode(records[: records.index(CheckpointEnd()) + 1], checkpointed=Checkpointed.REMUS))
    assert capsys.readouterr().err == (
        f"offset {offset + 8}: LIBXC_CONTEXT must have an empty body, got 4112 bytes\n")


def test_verify_colo_as_remus(colo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(colo), "--checkpointed", "colo"]) == 0
    capsys.readouterr()
    assert main(["verify", str(colo), "--checkpointed", "remus"]) == 1
    records = colo_main(2)
    offset = len(encode(records[: records.index(CheckpointEnd()) + 1]))
    assert capsys.readouterr().err == (
        f"offset {offset}: CHECKPOINT_STATE (libxl type 5, 4 bytes) after CHECKPOINT_END, "
        "as in a COLO stream (read as a Remus stream)\n")


@pytest.mark.parametrize("option", [[], ["--checkpointed", "remus"]])
def test_dump_remus(remus: Path, option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every CHECKPOINT_END is listed, at its offset, followed by the next checkpoint's libxc records."""
    assert main(["dump", str(remus), *option]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = remus_main(5)
    assert len(lines) == len(records)
    ends = [i for i, line in enumerate(lines) if line.split()[1:4] == ["libxl", "CHECKPOINT_END", "0"]]
    assert len(ends) == 6
    assert ends == [i for i, record in enumerate(records) if isinstance(record, CheckpointEnd)]
    for i in ends:
        offset = len(encode(records[:i], checkpointed=Checkpointed.REMUS))
        assert int(lines[i].split()[0]) == offset
    assert all(lines[i + 1].split()[1:3] == ["libxc", "PAGE_DATA"] for i in ends[:-1])
    assert not any("CHECKPOINT_STATE" in line for line in lines)


def test_dump_remus_failover_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "remus-failover.main"
    path.write_bytes(encode(remus_main(2, failover=True), checkpointed=Checkpointed.REMUS))
    assert main(["dump", str(path), "--json", "--checkpointed", "auto"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["type"] for row in rows].count("CHECKPOINT_END") == 3
    assert (rows[-1]["namespace"], rows[-1]["type"]) == ("libxc", "END")


def test_checkpointed_usage_error(colo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["verify", str(colo), "--checkpointed", "sometimes"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        "colod-stream verify: error: argument --checkpointed: invalid choice: 'sometimes' ")


#: The installed console script, run as a user runs it.
TOOL = str(Path(sys.executable).with_name("colod-stream"))


@pytest.mark.parametrize(("source", "said"), [
    # The kernel answers a read of an unmapped address of a process's memory with EIO.
    ("/proc/self/mem", "colod-stream: error: cannot read /proc/self/mem at offset 0: Input/output error"),
    ("/proc", "colod-stream: error: cannot read /proc: Is a directory"),
])
def test_read_error_is_one_line_and_status_2(source: str, said: str) -> None:
    done = subprocess.run([TOOL, "verify", source], capture_output=True, text=True, timeout=30, check=False)
    assert (done.returncode, done.stderr, done.stdout) == (2, said + "\n", "")


def test_read_error_on_standard_input() -> None:
    """This process's memory as standard input: the open succeeded, the read fails with EIO."""
    with open("/proc/self/mem", "rb", buffering=0) as memory:
        done = subprocess.run([TOOL, "dump", "-"], stdin=memory, capture_output=True, text=True,
                              timeout=30, check=False)
    assert (done.returncode, done.stderr) == (
        2, "colod-stream: error: cannot read standard input at offset 0: Input/output error\n")


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``colod-stream dump FILE | head -1``: one line, no traceback, status 141 as for SIGPIPE."""
    path = tmp_path / "long.main"
    path.write_bytes(encode(colo_main(250)))  # 1,500 lines: more than a pipe holds
    dump = subprocess.Popen([TOOL, "dump", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=dump.stdout, stdout=subprocess.PIPE)
    dump.stdout.close()  # head alone reads it now
    first, _ = head.communicate(timeout=30)
    assert dump.wait(timeout=30) == 141
    assert dump.stderr.read() == b""
    dump.stderr.close()
    assert first.split() == [b"0", b"libxl", b"STREAM_HEADER", b"16", b"legacy=False"]
