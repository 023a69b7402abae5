"""The run folder's files under concurrent writers."""

from __future__ import annotations

import json
import threading

from trajforge.flows.staging import write_json_atomic


def test_a_manifest_written_by_two_writers_at_once_is_always_whole(tmp_path):
    path = tmp_path / "manifest.json"
    write_json_atomic(path, {"writer": -1})
    stop, seen, errors = threading.Event(), set(), []

    def write(writer: int) -> None:
        try:
            for i in range(200):
                write_json_atomic(path, {"writer": writer, "i": i, "pad": "x" * 20_000})
        except OSError as exc:  # the other writer moved a shared temp file away
            errors.append(exc)

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(json.loads(path.read_text())["writer"])
            except ValueError as exc:  # a torn or empty file
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert not errors
    assert seen <= {-1, 0, 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left behind
