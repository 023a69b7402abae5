"""The deadline pool: a call that never returns fails at its deadline and holds nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from trajforge.pipelines.deadlines import DeadlineExceeded, DeadlinePool


def test_a_hung_call_fails_at_its_deadline_and_its_slot_is_refilled():
    abandoned = []
    pool = DeadlinePool(1, deadline_s=0.3, name="search", on_abandon=abandoned.append)
    hung = pool.submit(time.sleep, 3600)
    after = pool.submit(lambda: "next")  # queued behind the hung call on the only worker
    start = time.monotonic()
    pool.wait_all([hung, after])
    assert time.monotonic() - start < 3
    assert isinstance(hung.exception(), DeadlineExceeded) and "deadline of 0.3s" in str(hung.exception())
    assert after.result() == "next"  # a new worker took the slot
    assert len(abandoned) == 1 and abandoned[0].daemon and pool.abandoned(abandoned[0])
    pool.shutdown()


def test_a_hung_call_does_not_hold_the_interpreter_at_exit():
    # ThreadPoolExecutor joins its threads at exit: a hung call would keep this process alive.
    script = textwrap.dedent(
        """
        import time
        from trajforge.pipelines.deadlines import DeadlinePool
        pool = DeadlinePool(2, deadline_s=0.2)
        futures = [pool.submit(time.sleep, 3600), pool.submit(time.sleep, 0)]
        pool.wait_all(futures)
        pool.shutdown()
        print(type(futures[0].exception()).__name__, futures[1].result())
        """
    )
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DeadlineExceeded", "None"]
    assert time.monotonic() - start < 30
