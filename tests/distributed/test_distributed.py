"""jlstm.launch + jlstm.parallel across processes: a jax.distributed run of 2 and 4 processes on the
loopback address trains exactly like one process on the whole batch, and a failing run leaves no process.

This file is also the worker: ``python -m jlstm.launch ... -- tests/distributed/test_distributed.py train`` runs
:func:`worker` in every process (``__main__`` at the bottom).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import xla_flags
from jax.experimental import multihost_utils

import jlstm
from jlstm import launch, parallel
from jlstm.train import make_train_step

pytestmark = pytest.mark.slow          # started first (tests/conftest.py): processes, seconds each

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
H, T, B, STEPS = 4, 6, 8, 3           # B divides over 1, 2 and 4 processes (and 2 x 2 devices)
model = jlstm.recurrent(jlstm.lstm(H))
opt = optax.adam(3e-2)


def loss_fn(params, batch, key):
    _, ys = model.apply(params["rnn"], batch.xs)
    pred = ys[-1] @ params["w"]
    loss = jnp.mean((pred - batch.ys) ** 2)
    return loss, {"loss": loss}


train_step = make_train_step(loss_fn, opt)


def problem():
    """The same initial params and the same global batch in every process (same NumPy seed, no compiling)."""
    rng = np.random.default_rng(0)
    normal = lambda *shape: (0.5 * rng.standard_normal(shape)).astype(np.float32)
    params = {"rnn": jlstm.LSTMParams(w_x=normal(2, 4 * H), w_h=normal(H, 4 * H), b=normal(4 * H)),
              "w": normal(H)}
    return params, jlstm.tasks.Batch(rng.uniform(size=(T, B, 2)).astype(np.float32),
                                     rng.uniform(size=B).astype(np.float32))


def _listening_hosts() -> list[str]:
    """The local addresses (hex, as in /proc/net/tcp*) of this process's listening TCP sockets; Linux only."""
    if not sys.platform.startswith("linux"):
        return []
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    hosts = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:          # state LISTEN, one of our sockets
                    hosts.append(fields[1].split(":")[0])
    return hosts


def _is_loopback(hex_host: str) -> bool:
    """127.0.0.0/8 (IPv4, or IPv4-mapped IPv6) or ::1, from /proc/net's little-endian hex."""
    if len(hex_host) == 8:
        return hex_host.endswith("7F")
    return (hex_host[:24] == "0000000000000000FFFF0000" and hex_host.endswith("7F")) or \
        hex_host == "00000000000000000000000001000000"


# How process 1 fails, and the exit status the launcher must report for it (negative: that signal).
FAILURES = {"exception": 1, "sys_exit": 3, "os_exit": 3, "sigkill": -signal.SIGKILL}


def fail(mode: str, i: int) -> None:
    """Both processes meet in a collective; then process 1 fails and process 0 enters another
    collective, which waits for process 1 for ever unless the launcher stops the run."""
    multihost_utils.sync_global_devices("before the failure")
    if i == 1:
        print(f"process 1 fails now: {mode}", flush=True)
        if mode == "exception":
            raise ValueError("process 1 raised on purpose")
        if mode == "sys_exit":
            sys.exit(3)
        if mode == "os_exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    multihost_utils.sync_global_devices("after the failure")


def worker(mode: str) -> None:
    """One process of the run (jax.distributed is already initialised by jlstm.launch)."""
    n, i = jax.process_count(), jax.process_index()
    if mode in FAILURES:
        fail(mode, i)
        return
    if mode == "sleep":
        time.sleep(120)
        return
    params0, batch = problem()
    mesh = parallel.data_mesh()
    share = parallel.local_batch_slice(B, mesh)              # this process loads only its own sequences
    assert (share.start, share.stop) == (i * B // n, (i + 1) * B // n), share
    local = type(batch)(batch.xs[:, share], batch.ys[share])
    global_batch = parallel.shard_batch(local, mesh)
    in_place = all(np.array_equal(np.asarray(sh.data), batch.xs[sh.index])      # each device holds its part
                   for sh in global_batch.xs.addressable_shards)                  # of the whole batch, in order
    step = parallel.data_parallel_step(train_step, mesh)
    params, opt_state = parallel.replicate((params0, opt.init(params0)), mesh)
    try:                                    # a process-local NumPy batch is ambiguous with several processes
        step(params, opt_state, local, jax.random.key(0))
        local_error = ""
    except ValueError as e:
        local_error = str(e)
    print("INFO " + json.dumps({"local_batch_error": local_error,
        "processes": n, "process": i, "devices": len(jax.devices()), "local_devices": jax.local_device_count(),
        "local_xs_shapes": sorted({tuple(s.data.shape) for s in global_batch.xs.addressable_shards}),
        "global_xs_in_place": in_place}), flush=True)
    for s in range(STEPS):
        params, opt_state, metrics = step(params, opt_state, global_batch, jax.random.key(10 + s))
        print("STEP " + json.dumps({"step": s, "loss": float(metrics["loss"]),
                                    "params": [np.asarray(x).tolist() for x in jax.tree.leaves(params)]}),
              flush=True)
    # The same run on a 2-D mesh: LSTM 4H axes split over a model axis of 2 devices, the batch over the rest.
    mesh2 = parallel.data_model_mesh(len(jax.devices()) // 2, 2)
    step2 = parallel.model_parallel_step(train_step, mesh2)
    share2 = parallel.local_batch_slice(B, mesh2)            # model groups across processes share sequences
    global_batch2 = parallel.shard_batch(type(batch)(batch.xs[:, share2], batch.ys[share2]), mesh2)
    params, opt_state = params0, opt.init(params0)
    for s in range(STEPS):
        params, opt_state, metrics = step2(params, opt_state, global_batch2, jax.random.key(10 + s))
        spec = tuple(params["rnn"].w_h.sharding.spec)
        params_host = [np.asarray(multihost_utils.process_allgather(x, tiled=True))      # whole arrays
                       for x in jax.tree.leaves(params)]
        print("MODEL " + json.dumps({"step": s, "loss": float(metrics["loss"]), "w_h_spec": list(spec),
                                     "params": [x.tolist() for x in params_host]}), flush=True)
    print("NET " + json.dumps({"listening": _listening_hosts()}), flush=True)


@pytest.fixture(scope="module")
def reference():
    """One process, one device, the whole batch: params after every step."""
    params, batch = problem()
    opt_state, step, out = opt.init(params), jax.jit(train_step), []
    for s in range(STEPS):
        params, opt_state, metrics = step(params, opt_state, batch, jax.random.key(10 + s))
        out.append({"loss": float(metrics["loss"]), "params": [np.asarray(x) for x in jax.tree.leaves(params)]})
    return params, out


def _records(stdout: str, prefix: str) -> list[dict]:
    return [json.loads(line.split(prefix, 1)[1]) for line in stdout.splitlines() if prefix in line]


def _check_against_reference(stdouts: dict[int, str], reference, n_proc: int, local_devices: int):
    _, ref = reference
    assert sorted(stdouts) == list(range(n_proc))
    for pid, out in stdouts.items():
        (info,) = _records(out, "INFO ")
        assert info["processes"] == n_proc and info["process"] == pid
        assert info["devices"] == n_proc * local_devices and info["local_devices"] == local_devices
        assert info["local_xs_shapes"] == [[T, B // (n_proc * local_devices), 2]]   # each device: its share
        assert info["global_xs_in_place"]          # the shares assemble the whole batch, in order
        assert "must be a global array" in info["local_batch_error"] and "shard_batch" in info["local_batch_error"]
        (net,) = _records(out, "NET ")          # the coordinator (process 0) and gloo listen on loopback only
        assert all(_is_loopback(h) for h in net["listening"]), net
        if sys.platform.startswith("linux"):
            assert net["listening"]
        for kind in ("STEP ", "MODEL "):        # data parallel, then data x model
            steps = _records(out, kind)
            assert [r["step"] for r in steps] == list(range(STEPS))
            for got, want in zip(steps, ref):
                np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6, atol=1e-7)
                for g, w in zip(got["params"], want["params"]):
                    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=0, atol=1e-6)
        assert all(r["w_h_spec"] == [None, "model"] for r in _records(out, "MODEL "))
    first, last = ref[0]["params"], ref[-1]["params"]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(first, last)) > 1e-2      # it really trained


def _env() -> dict[str, str]:
    paths = [ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")]   # the tests' helpers too
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(paths))
    env["XLA_FLAGS"] = os.environ.get(xla_flags.ENV, "")   # no device count: --local-device-count sets it
    return env


def test_four_processes_equal_one_process(reference):
    results = launch.launch_local([__file__, "train"], 4, local_device_count=1, timeout_s=240,
                                  env=_env(), cwd=ROOT)
    assert [r.returncode for r in results] == [0, 0, 0, 0]
    _check_against_reference({r.process_id: r.stdout for r in results}, reference, 4, 1)


def test_two_processes_of_two_devices_via_the_command_line(reference):
    proc = subprocess.run([sys.executable, "-m", "jlstm.launch", "--local", "2", "--local-device-count", "2",
                           "--timeout", "240", "--", __file__, "train"],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_process: dict[int, str] = {}
    for line in proc.stdout.splitlines():            # "[i] ..." lines, one prefix per process
        pid, _, rest = line.partition("] ")
        by_process[int(pid.lstrip("["))] = by_process.get(int(pid.lstrip("[")), "") + rest + "\n"
    _check_against_reference(by_process, reference, 2, 2)


@pytest.mark.parametrize("mode", list(FAILURES))
def test_a_failing_process_stops_the_run_and_leaves_no_process(mode):
    """An exception, sys.exit(3), os._exit(3) or SIGKILL in process 1, while process 0 waits for it in a
    collective: the run ends at once (an exception or sys.exit must not wait at JAX's shutdown barrier),
    naming process 1 and quoting the end of its output, and no process is left."""
    start = time.monotonic()
    with pytest.raises(launch.LaunchError) as err:
        launch.launch_local([__file__, mode], 2, timeout_s=100, env=_env(), cwd=ROOT)
    assert time.monotonic() - start < 30
    status = FAILURES[mode]
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    message = str(err.value)
    assert message.startswith(f"jlstm.launch.launch_local: process 1 {how}"), message
    assert f"process 1 fails now: {mode}" in message                 # the end of its output
    assert mode != "exception" or "ValueError: process 1 raised on purpose" in message
    results = err.value.results
    assert err.value.process_id == 1 and results[1].returncode == status and results[0].returncode != 0
    for r in results:
        with pytest.raises(ProcessLookupError):
            os.kill(r.pid, 0)


def _user_script(out: str, *args: str, processes: int = 0) -> tuple[subprocess.CompletedProcess, float]:
    """tests/user_train_script.py run alone, or by the launcher's command line on ``processes`` processes."""
    script = [os.path.join(ROOT, "tests", "user_train_script.py"), out, *args]
    launcher = [sys.executable, "-m", "jlstm.launch", "--local", str(processes), "--"] if processes else \
        [sys.executable]
    start = time.monotonic()
    proc = subprocess.run(launcher + script, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - start


def test_a_users_script_trains_alike_on_two_processes_and_a_bug_ends_the_run(tmp_path):
    """A script written as a user would (tests/user_train_script.py): on 2 processes it trains the same
    params as alone; when it raises on process 1, the command ends within 60 s with a non-zero status
    and says which process failed and why."""
    alone, _ = _user_script(str(tmp_path / "alone.npz"))
    assert alone.returncode == 0, alone.stderr[-3000:]
    two, _ = _user_script(str(tmp_path / "two.npz"), processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "[1] process 1 step 3" in two.stdout
    with np.load(tmp_path / "alone.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert sorted(a) == sorted(b) and len(a) == 4          # w_x, w_h, b, w
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6)
    failing, seconds = _user_script(str(tmp_path / "failing.npz"), "--fail-on-process", "1", processes=2)
    assert failing.returncode == 1 and seconds < 60, (failing.returncode, seconds)
    assert "process 1 exited with status 1" in failing.stderr
    assert failing.stderr.rstrip().endswith("RuntimeError: a bug in the user's script, on process 1")
    assert not (tmp_path / "failing.npz").exists()


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_killing_the_launcher_kills_its_processes():
    launcher = subprocess.Popen([sys.executable, "-m", "jlstm.launch", "--local", "2", "--timeout", "100", "--",
                                 __file__, "sleep"], env=_env(), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(children) < 2 and time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.05)
            children = _children(launcher.pid)
        assert len(children) == 2, "the launcher did not start its 2 processes"
    finally:
        launcher.kill()                     # as a CI timeout would: no chance to clean up
        launcher.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children)


def test_bad_launch_arguments_raise():
    with pytest.raises(ValueError, match="'host:port'"):
        launch.initialize("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match=r"process_id must be in 0\.\.1"):
        launch.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="num_processes must be an int >= 1"):
        launch.initialize("127.0.0.1:1234", 0, 0)
    with pytest.raises(ValueError, match="non-empty list"):
        launch.launch_local("train.py", 2)
    proc = subprocess.run([sys.executable, "-m", "jlstm.launch", "--local", "2", "--", "no_such_script.py"],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no_such_script.py" in proc.stderr


if __name__ == "__main__":
    worker(sys.argv[1])
