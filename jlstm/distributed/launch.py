"""The launcher behind ``python -m jlstm.launch`` (its public name; the docs live there).

See :mod:`jlstm.launch` for how to run a script on several processes and what happens on a failure.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import Any, NamedTuple, NoReturn, Sequence

__all__ = ["LaunchError", "ProcessResult", "free_port", "initialize", "launch_local", "main"]


class ProcessResult(NamedTuple):
    """What one launched process did: its id, OS pid, exit status (negative: killed by that signal), output."""

    process_id: int
    pid: int
    returncode: int
    stdout: str
    stderr: str


class LaunchError(RuntimeError):
    """A launched process failed or ran past the time limit.

    Attributes:
      results: every process's :class:`ProcessResult`.
      process_id: the process that failed first, or ``None`` when the time limit passed.
    """

    def __init__(self, message: str, results: list[ProcessResult], process_id: int | None = None):
        super().__init__(message)
        self.results = results
        self.process_id = process_id


def _parse_address(address: str, where: str) -> tuple[str, int]:
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{where}: the coordinator address must be 'host:port' with a port in 1..65535, "
                         f"e.g. '10.0.0.1:1234' or '127.0.0.1:1234'; got {address!r}.")
    return host, int(port)


def _check_count(name: str, value: object, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}.")
    return value


def initialize(
    coordinator: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_count: int | None = None,
    bind_address: str | None = None,
    timeout_s: int = 300,
) -> None:
    """Join this process to a multi-process JAX run (``jax.distributed.initialize``).

    Call it first, before any other JAX work, in every process of the run.

    Args:
      coordinator: ``"host:port"`` of process 0, reachable from every process.
      num_processes: how many processes take part (usually one per host).
      process_id: this process's id, ``0 <= process_id < num_processes``; process 0 hosts
        the coordination service.
      local_device_count: on CPU, how many devices this process exposes (``jax_num_cpu_devices``);
        ``None`` keeps JAX's default (one CPU device, or the host's accelerators).
      bind_address: where process 0's coordination service listens; default: the address
        part of ``coordinator`` when it is a loopback address (so a local run never listens
        on the network), else JAX's default (all interfaces, the coordinator's port).
      timeout_s: how long to wait for every process to join.

    Raises:
      ValueError: a malformed address or count, or ``process_id`` out of range.
    """
    where = "jlstm.launch.initialize"
    host, port = _parse_address(coordinator, where)
    _check_count("num_processes", num_processes, where, 1)
    _check_count("process_id", process_id, where, 0)
    if process_id >= num_processes:
        raise ValueError(f"{where}: process_id must be in 0..{num_processes - 1} for num_processes="
                         f"{num_processes}, got {process_id}; number the processes from 0.")
    import jax

    if local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", _check_count("local_device_count", local_device_count, where, 1))
    collectives = "jax_cpu_collectives_implementation"
    if not getattr(jax.config, collectives):   # older JAX: no cross-process CPU collectives
        jax.config.update(collectives, "gloo")
    if bind_address is None and host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        bind_address = f"{host}:{port}"
    jax.distributed.initialize(coordinator_address=f"{host}:{port}", num_processes=num_processes,
                               process_id=process_id, coordinator_bind_address=bind_address,
                               initialization_timeout=timeout_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _run_target(target: Sequence[str]) -> None:
    """Run ``script.py args...`` or ``-m module args...`` as ``__main__`` in this process."""
    if not target:
        raise SystemExit("jlstm.launch: give the script to run after '--', e.g. -- train.py --lr 1e-3")
    if target[0] == "-m":
        if len(target) < 2:
            raise SystemExit("jlstm.launch: '-m' needs a module name, e.g. -- -m mypackage.train")
        sys.argv = [target[1], *target[2:]]
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        if not os.path.isfile(target[0]):
            raise SystemExit(f"jlstm.launch: no script {target[0]!r}; give a path to a .py file or -m module.")
        sys.argv = list(target)
        sys.path.insert(0, os.path.dirname(os.path.abspath(target[0])))
        runpy.run_path(target[0], run_name="__main__")


def _exit_status(code: object) -> int:
    """The status Python gives ``SystemExit(code)``, printing a message code as Python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


_FAILURES_ENV = "JLSTM_LAUNCH_FAILURES"


def _record_failure(process_id: int | None) -> None:
    """Tell a local launcher when this process's script failed: a file named by the process id in
    the folder ``$JLSTM_LAUNCH_FAILURES``, holding the wall-clock time. A peer that fails later
    because this one went away (a collective whose connection closed) records a later time, so the
    launcher can name the process that failed first."""
    folder = os.environ.get(_FAILURES_ENV)
    if folder and process_id is not None:
        try:
            with open(os.path.join(folder, str(process_id)), "w") as f:
                f.write(repr(time.time()))
        except OSError:
            pass


def _leave_now(status: int) -> NoReturn:
    """End this process with ``status`` at once: flush the output, then skip the interpreter's exit.

    A normal exit runs ``jax.distributed.shutdown`` (an atexit hook), which waits at a barrier for
    every other process of the run; a process that failed must not wait there for processes
    that may be blocked in a collective waiting for it.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame outside this module and runpy (the user's script)."""
    while tb is not None and tb.tb_next is not None and (
            tb.tb_frame.f_code.co_filename in (__file__, runpy.__file__, "<frozen runpy>")):
        tb = tb.tb_next
    return tb


def _run_guarded(target: Sequence[str], process_id: int | None = None) -> None:
    """Run the target; if it fails (an exception, or ``sys.exit`` with a non-zero status), print the
    traceback through ``sys.excepthook`` and leave at once with a non-zero status (1 for an exception),
    never at JAX's shutdown barrier. A target that returns, or exits with status 0, ends normally."""
    try:
        _run_target(target)
    except SystemExit as e:
        status = _exit_status(e.code)
        if status:
            _record_failure(process_id)
            _leave_now(status)
    except BaseException as e:
        _record_failure(process_id)
        tb = _user_frames(e.__traceback__)
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        _leave_now(1)


def _child_command(target: Sequence[str], coordinator: str, num_processes: int, process_id: int,
                   local_device_count: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "jlstm.launch", "--coordinator", coordinator,
           "--num-processes", str(num_processes), "--process-id", str(process_id)]
    if local_device_count is not None:
        cmd += ["--local-device-count", str(local_device_count)]
    return cmd + ["--", *target]


_PARENT_ENV = "JLSTM_LAUNCH_PARENT"


def _die_with_parent() -> None:
    """In a process started by :func:`launch_local`: on Linux, ask for SIGKILL when the launcher dies,
    so a launcher that is itself killed (a CI timeout) leaves no process behind."""
    parent = os.environ.pop(_PARENT_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):                                  # the launcher died before that call
        os._exit(1)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the process and everything it started (it leads its own session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()


def _drain(stream: Any, sink: list[str], i: int, echo_to: Any, lock: threading.Lock) -> None:
    """Collect a child's output stream line by line, echoing it with a ``[i]`` prefix if asked."""
    for chunk in iter(stream.readline, ""):
        sink.append(chunk)
        if echo_to is not None:
            with lock:
                echo_to.write(f"[{i}] {chunk}")
                echo_to.flush()
    stream.close()


class _Started(NamedTuple):
    """The processes of a run, their collected output, and when each one ended (set by a watcher thread
    per process, so that the first failure is told from the ones it caused)."""

    procs: list[subprocess.Popen]
    outputs: list[tuple[list[str], list[str]]]
    threads: list[threading.Thread]
    ended: dict[int, float]
    changed: threading.Event


def _watch(started: _Started, i: int) -> None:
    started.procs[i].wait()
    started.ended[i] = time.monotonic()
    started.changed.set()


def _start(commands: list[list[str]], env: dict[str, str], cwd: str | None, echo: bool) -> _Started:
    """Start one process per command, each in its own session, with threads that collect its output."""
    started = _Started([], [], [], {}, threading.Event())
    lock = threading.Lock()
    try:
        for i, cmd in enumerate(commands):
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, env=env, cwd=cwd, start_new_session=True)
            started.procs.append(proc)
            out: tuple[list[str], list[str]] = ([], [])
            started.outputs.append(out)
            jobs = [(_drain, (stream, sink, i, to if echo else None, lock)) for stream, sink, to in
                    ((proc.stdout, out[0], sys.stdout), (proc.stderr, out[1], sys.stderr))]
            for fn, args in [*jobs, (_watch, (started, i))]:
                t = threading.Thread(target=fn, args=args, daemon=True)
                t.start()
                started.threads.append(t)
    except BaseException:
        _stop(started)
        raise
    return started


def _wait_all(started: _Started, timeout_s: float, failures: str) -> tuple[str, int | None] | None:
    """Wait until every process exits 0 (``None``), or one fails or the time is up: then a description
    and the id of the process that failed first (``None`` on a timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ended = dict(started.ended)
        if any(started.procs[i].returncode != 0 for i in ended):
            i = _first_failure(started, failures)
            code = started.procs[i].returncode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            return f"process {i} {how}", i
        if len(ended) == len(started.procs):
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            running = [i for i in range(len(started.procs)) if i not in ended]
            return f"the run passed timeout_s={timeout_s} (still running: {running})", None
        started.changed.wait(min(left, 1.0))
        started.changed.clear()


def _first_failure(started: _Started, failures: str, grace_s: float = 3.0) -> int:
    """The process that failed first, once the failures it caused have had ``grace_s`` to show.

    A process that died without recording its failure (a signal, ``os._exit``) failed on its own:
    its peers fail only after it is gone. Among the others, the earliest recorded failure time
    wins (see :func:`_record_failure`); the order in which the exits were noticed is the last resort.
    """
    limit = time.monotonic() + grace_s
    while len(started.ended) < len(started.procs) and time.monotonic() < limit:
        started.changed.wait(0.05)
        started.changed.clear()
    ended = dict(started.ended)

    def rank(i: int) -> tuple[int, float, float]:
        path = os.path.join(failures, str(i))
        try:
            with open(path) as f:
                recorded = float(f.read())
        except (OSError, ValueError):
            return (0, 0.0, ended[i])                 # unrecorded: it failed on its own
        return (1, recorded, ended[i])

    return min((i for i in ended if started.procs[i].returncode != 0), key=rank)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _failure_message(where: str, failed: tuple[str, int | None], results: list[ProcessResult]) -> str:
    """What went wrong, and the end of the failed process's output (every process's on a timeout)."""
    what, culprit = failed
    text = f"{where}: {what}; all {len(results)} processes were stopped."
    for r in results if culprit is None else [results[culprit]]:
        for name, out in (("stdout", r.stdout), ("stderr", r.stderr)):
            if out.strip():
                text += f"\n--- the end of process {r.process_id}'s {name} (status {r.returncode}):\n{_tail(out)}"
    return text


def _stop(started: _Started) -> list[ProcessResult]:
    """Kill whatever still runs (with what it started), reap every process and collect the output."""
    for proc in started.procs:
        _kill(proc)
    for proc in started.procs:
        proc.wait()
    for t in started.threads:
        t.join(timeout=5)
    return [ProcessResult(i, p.pid, p.returncode, "".join(o[0]), "".join(o[1]))
            for i, (p, o) in enumerate(zip(started.procs, started.outputs))]


def launch_local(
    target: Sequence[str],
    num_processes: int,
    *,
    local_device_count: int | None = 1,
    timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    echo: bool = False,
) -> list[ProcessResult]:
    """Run ``target`` (``["script.py", *args]`` or ``["-m", "module", *args]``) in N local processes.

    The processes form one ``jax.distributed`` run over the loopback address
    (``127.0.0.1`` and a free port); process ``i`` gets ``process_id=i``. The call waits for
    all of them. If any exits with a non-zero status (an exception, ``sys.exit``, a signal), or
    ``timeout_s`` passes, the others are killed at once (with whatever they started) and
    :class:`LaunchError` is raised, naming the process and quoting the end of its output. A
    process whose script raises leaves at once, without waiting at JAX's shutdown barrier.
    On Linux the processes also die with the caller if it is killed.

    Args:
      target: the script and its arguments, as after ``--`` on the command line.
      num_processes: how many processes to start.
      local_device_count: CPU devices per process (``None``: JAX's default).
      timeout_s: wall-clock limit for the whole run.
      env: the environment of the processes (default: this process's).
      cwd: their working directory.
      echo: also copy every line the processes print to this process's stdout and stderr as it
        comes, prefixed with ``[process_id]`` (the command line does this).

    Returns:
      One :class:`ProcessResult` per process, in process-id order, all with exit status 0.

    Raises:
      LaunchError: a process failed or the run timed out; ``.results`` has every process's output
        and ``.process_id`` the failed process (``None`` on a timeout).
    """
    where = "jlstm.launch.launch_local"
    _check_count("num_processes", num_processes, where, 1)
    if isinstance(target, str) or not target:
        raise ValueError(f"{where}: target must be a non-empty list like ['train.py', '--lr', '1e-3'], "
                         f"got {target!r}.")
    coordinator = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="jlstm-launch-") as failures:
        child_env = dict(os.environ if env is None else env,
                         **{_PARENT_ENV: str(os.getpid()), _FAILURES_ENV: failures})
        commands = [_child_command(target, coordinator, num_processes, i, local_device_count)
                    for i in range(num_processes)]
        started = _start(commands, child_env, cwd, echo)
        try:
            failed = _wait_all(started, timeout_s, failures)
        finally:
            results = _stop(started)
    if failed:
        raise LaunchError(_failure_message(where, failed, results), results, failed[1])
    return results


def _launcher_status(error: LaunchError) -> int:
    """The command line's exit status: the failed process's (128 + N for signal N), 1 on a timeout."""
    if error.process_id is None:
        return 1
    code = error.results[error.process_id].returncode
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m jlstm.launch [options] -- script.py args...``.

    With ``--local N`` it returns the run's status. Otherwise it runs the script in this process, and
    a script that fails ends this process at once with its status (see the module's docstring).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    target: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, target = argv[:k], argv[k + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m jlstm.launch",
        description="Run a script as one process of a jax.distributed run (one command per host), "
                    "or as N local processes with --local N. The script follows '--'.")
    parser.add_argument("--coordinator", help="host:port of process 0, e.g. 10.0.0.1:1234")
    parser.add_argument("--num-processes", type=int, help="processes in the run (one per host)")
    parser.add_argument("--process-id", type=int, help="this process's id, 0..num_processes-1")
    parser.add_argument("--local", type=int, metavar="N", help="start N processes on this machine (loopback)")
    parser.add_argument("--local-device-count", type=int, help="CPU devices per process")
    parser.add_argument("--timeout", type=float, default=3600.0, help="--local: seconds before all are killed")
    args = parser.parse_args(argv)
    _die_with_parent()
    if not target:
        parser.error("give the script after '--', e.g. python -m jlstm.launch --local 2 -- train.py")
    if target[0] != "-m" and not os.path.isfile(target[0]):
        parser.error(f"no script {target[0]!r}; give a path to a .py file, or -m module, after '--'")
    if args.local is not None:
        if args.coordinator or args.process_id is not None or args.num_processes is not None:
            parser.error("--local N starts every process itself; drop --coordinator/--num-processes/--process-id")
        try:
            launch_local(target, args.local, local_device_count=args.local_device_count,
                         timeout_s=args.timeout, echo=True)
        except LaunchError as e:
            print(e, file=sys.stderr)
            return _launcher_status(e)
        return 0
    if args.coordinator is None or args.num_processes is None or args.process_id is None:
        parser.error("give --coordinator, --num-processes and --process-id (one command per host), or --local N")
    try:
        initialize(args.coordinator, args.num_processes, args.process_id,
                   local_device_count=args.local_device_count)
    except ValueError as e:
        parser.error(str(e))
    _run_guarded(target, args.process_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
