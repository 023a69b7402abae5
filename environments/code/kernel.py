"""The interpreter of one episode, run inside the sandbox (code/sandbox.py): standard library only,
never imported by trajforge itself.

It reads requests, one JSON line each on stdin, and answers each with one JSON line on the
protocol descriptor (the original stdout). A request is {"code": str, "cpu_s": float} (a cell,
run in the episode's persistent namespace) or {"test": str, "entry_point": str} (hidden tests,
then `check(entry_point)`). An answer is {"output": str, "error": str|null,
"reason": str|null}: reason is null when the cell ran, "error" when it raised, or the limit that
stopped it ("cpu_limit", "memory_limit", "process_limit", "file_size_limit", "output_limit").

Raw writes to descriptors 1 and 2 (os.write, child processes) go to an unlinked file that the
file-size limit bounds; print() goes to a buffer that the output limit bounds.
"""

import errno
import json
import os
import resource
import signal
import sys
import tempfile
import traceback

PID = os.getpid()


class LimitReached(BaseException):  # noqa: N818 - not an Exception: a cell's `except Exception` keeps out
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CappedWriter:
    """sys.stdout/sys.stderr of a cell: keeps at most `cap` characters, then stops the cell."""

    encoding, errors = "utf-8", "replace"  # what code that inspects its stream (doctest) expects

    def __init__(self, sink: list, cap: int) -> None:
        self.sink, self.cap = sink, cap

    def write(self, text: str) -> int:
        used = sum(len(s) for s in self.sink)
        if used + len(text) > self.cap:
            self.sink.append(text[: max(0, self.cap - used)])
            raise LimitReached("output_limit", f"the cell printed more than {self.cap} characters")
        self.sink.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _on_cpu(signum, frame):  # SIGXCPU: the cell's CPU time is spent
    raise LimitReached("cpu_limit", "the cell used its CPU time")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, LimitReached):
        return exc.reason
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, OSError) and exc.errno == errno.EAGAIN:  # fork or clone refused
        return "process_limit"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "file_size_limit"
    return "error"


def _reap() -> None:
    """Stop whatever the cell left running (background or forked processes): kill(-1) reaches
    every process this user may signal in the sandbox's own process namespace, except this one."""
    # Only inside the fence: there -1 means this sandbox's user in its own process namespace;
    # outside it would mean every process of the host's user.
    if os.environ.get("TRAJFORGE_FENCED") != "1" or os.getuid() == 0:
        return
    for _ in range(3):  # a process forking meanwhile may escape one sweep
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:  # ESRCH: nothing left to stop
            return


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    raw = tempfile.TemporaryFile(dir=os.environ.get("TMPDIR"))  # noqa: SIM115 - open for the kernel's life
    os.dup2(raw.fileno(), 1)
    os.dup2(raw.fileno(), 2)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file-size limit fails, not kills
    signal.signal(signal.SIGXCPU, _on_cpu)
    cap = int(os.environ.get("TRAJFORGE_OUTPUT_CHARS", "65536"))
    namespace = {"__name__": "__main__"}
    for line in sys.stdin:
        request = json.loads(line)
        out: list = []
        error = reason = None
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime)
        cell_cpu = int(request.get("cpu_s") or 0)
        if cell_cpu:
            limit = spent + cell_cpu  # spent is rounded down: up to a second more
            resource.setrlimit(
                resource.RLIMIT_CPU, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard)
            )
        sys.stdout = sys.stderr = CappedWriter(out, cap)
        try:
            if "test" in request:
                # As HumanEval's harness: the tests share the solution's namespace (some call its
                # helpers). The host runs them in a grader's interpreter, never the agent's.
                exec(compile(request["test"], "<hidden tests>", "exec"), namespace)
                namespace["check"](namespace[request["entry_point"]])
            else:
                exec(compile(request["code"], "<cell>", "exec"), namespace)
        except BaseException as exc:  # noqa: BLE001 - the cell's error is its observation
            if os.getpid() != PID:  # a forked child of the cell: it must never answer
                os._exit(1)
            reason = _reason(exc)
            try:
                error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))
            except MemoryError:
                error = f"{type(exc).__name__}: {exc}"
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        if os.getpid() != PID:
            os._exit(0)
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        _reap()
        text = "".join(out)
        raw.seek(0)
        spilled = raw.read(max(0, cap - len(text))).decode("utf-8", "replace")
        raw.seek(0)
        raw.truncate()
        proto.write(json.dumps({"output": text + spilled, "error": error, "reason": reason}) + "\n")
        proto.flush()


if __name__ == "__main__":
    main()
