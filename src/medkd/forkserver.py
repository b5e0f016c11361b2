"""A fork server for local runs: pay for importing torch once per Snakemake run, not once per job.

A local run of the embedded default starts a few hundred short ``medkd <step>`` processes; each used
to spend 2-5 s importing torch, NumPy, SciPy, pandas before doing a second of work. The server imports
those third-party libraries once, fills one pure-Python cache of ``medkd.spec`` (:data:`WARM`), and forks
a fresh process per job. Each job drops every ``medkd`` module the server imported and imports medkd
afresh from its own ``PYTHONPATH``, so it runs the code on disk; the server never touches a GPU or starts
a thread pool, so forking is safe.

Protocol (Unix socket, one connection per job): the client sends its argv, working directory,
environment, umask and resource limits, and its stdin/stdout/stderr file descriptors (``SCM_RIGHTS``);
the server forks a handler that forks the job (which adopts all of these and runs
:func:`medkd.cli.main`) and sends back its exit status (a job killed by signal n reports 128 + n, as a
shell does). If the client goes away (Snakemake cancels or kills the job), the handler sees the
connection close and kills the job, so nothing runs orphaned. The server exits when the process that
started it (Snakemake) is gone, or on SIGTERM.

Safety: the socket lives in a private directory (``tempfile.mkdtemp``: mode 0700, owned by the user), and
the server serves only peers of its own uid (``SO_PEERCRED``), since a job runs with the environment
its client sends. A client that finds no server listening (it was killed, or its socket is stale)
prints one warning line and runs the step in its own interpreter.

Who uses it: the Snakefile calls :func:`start_for_run` in ``onstart`` for local runs, which exports
``MEDKD_FORKSERVER``; ``workflow/scripts/medkd`` connects when the socket exists and the job is neither
in a Snakemake-made conda environment nor inside a SLURM allocation, and runs the step directly
otherwise. Results are identical either way (a job is the same code with the same arguments); only the
start-up cost differs.

Commands: ``python -m medkd.forkserver serve SOCKET`` and ``python -m medkd.forkserver run SOCKET --
ARGS...`` (the client; standard library only, so it starts in tens of milliseconds).
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

PRELOAD = ("numpy", "scipy.ndimage", "scipy.stats", "h5py", "torch", "torch._dynamo", "pandas", "tqdm", "jsonschema",
           "yaml", "skimage.metrics", "matplotlib", "mlflow", "mlflow.pytorch", "mlflow.tracking",
           "mlflow.store.tracking.sqlalchemy_store")
"""Imported once by the server. ``torch._dynamo`` is there because creating the first optimizer imports it
(``torch.optim.Optimizer.__init__`` is wrapped by ``torch._compile``): 2-5 s of every training job here.
The MLflow modules are what a ``track`` job imports (3.5 s here: the client, the PyTorch flavour and the
SQLAlchemy store); importing them starts no thread. Apart from :data:`WARM`, nothing is computed before
forking (a thread pool started in the server would not survive the fork)."""
WARM = (("medkd.spec", "_model_validator"),)
"""Pure-Python caches filled once by the server after its imports, so that forked jobs inherit them:
the JSON Schema validator of a model spec (parsing the config schema and building the validator, ~0.2 s
of every job that reads a ``--spec``)."""
_HEADER = struct.Struct("!Q")
CLIENT_PID_ENV = "MEDKD_CLIENT_PID"
"""Set in a job run by the server: the pid of its client (what Snakemake started)."""
SOCKET_VARIABLE = "MEDKD_FORKSERVER"
"""The socket jobs connect to (exported by :func:`start_for_run`); ``off`` in the client's environment
disables the server."""
OWNER_VARIABLE = "MEDKD_SNAKEMAKE_PID"
"""``host:pid`` of the Snakemake client of a local run: its jobs end when it is gone (medkd.cli)."""
PRELOAD_VARIABLE = "MEDKD_FORKSERVER_PRELOAD"
"""Comma-separated modules to import instead of :data:`PRELOAD` (the protocol tests start a light server)."""


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("client closed the connection early")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------ client


def _limits() -> dict[str, list[int]]:
    import resource

    out = {}
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            try:
                out[name] = list(resource.getrlimit(getattr(resource, name)))
            except (ValueError, OSError):
                pass
    return out


def run_client(path: str, argv: list[str]) -> int | None:
    """Run ``medkd argv`` in the server at ``path``; returns the job's exit status, or None when no server
    listens there (the caller then runs the step itself)."""
    umask = os.umask(0)
    os.umask(umask)
    payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask,
                          "rlimits": _limits()}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            print(f"medkd: no fork server at {path} ({exc.strerror}); running the step in its own interpreter",
                  file=sys.stderr, flush=True)
            return None
        socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
        conn.sendall(payload)
        reply = b""
        while len(reply) < 4:
            chunk = conn.recv(4 - len(reply))
            if not chunk:
                return 1  # the server went away: report failure, Snakemake shows the log
            reply += chunk
    return struct.unpack("!i", reply)[0]


def start_for_run(wrapper: str, log_path: str | os.PathLike, snakemake_pid: int | None = None):
    """Start a server for this Snakemake client (``snakemake_pid``, default: this process) and export, in
    this process's environment (which jobs inherit), :data:`OWNER_VARIABLE` and :data:`SOCKET_VARIABLE`.

    The socket is ``<private dir>/socket`` in a fresh ``tempfile.mkdtemp`` directory (mode 0700). Nothing
    is started inside a SLURM allocation or when ``MEDKD_FORKSERVER=off``. ``MEDKD_FORKSERVER_WAIT=<s>``
    waits up to s seconds until the server listens (the fault gauntlet kills jobs through their client).

    Returns:
        (process, socket path) of the server, or None when none was started; pass it to :func:`stop`.
    """
    import subprocess
    import tempfile
    from pathlib import Path

    pid = snakemake_pid or os.getpid()
    if os.environ.get("SLURM_JOB_ID"):
        return None
    os.environ[OWNER_VARIABLE] = f"{socket.gethostname()}:{pid}"
    if os.environ.get(SOCKET_VARIABLE) == "off":
        return None
    sock = os.path.join(tempfile.mkdtemp(prefix="medkd-forkserver-"), "socket")
    log = Path(log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.Popen([wrapper, "forkserver", sock, str(pid)], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    os.environ[SOCKET_VARIABLE] = sock
    deadline = time.monotonic() + float(os.environ.get("MEDKD_FORKSERVER_WAIT", "0") or 0)
    while time.monotonic() < deadline and not os.path.exists(sock) and proc.poll() is None:
        time.sleep(0.05)
    return proc, sock


def stop(server) -> None:
    """Stop a server from :func:`start_for_run` (SIGTERM, then SIGKILL after 10 s) and remove its directory."""
    import shutil

    if server is None:
        return
    proc, sock = server
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except Exception:
        proc.kill()
    shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


# ------------------------------------------------------------------------------------------ server


def _run_job(request: dict, fds: list[int]) -> None:
    """In the forked job process: adopt the client's stdio, directory and environment; run the step."""
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "umask" in request:
        os.umask(int(request["umask"]))
    _apply_limits(request.get("rlimits", {}))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    for name in [m for m in sys.modules if m == "medkd" or m.startswith("medkd.")]:
        del sys.modules[name]  # the job imports medkd afresh from its own PYTHONPATH
    sys.argv = ["medkd", *request["argv"]]
    try:  # `ps`/`top` show the step (all jobs share the server's command line)
        with open("/proc/self/comm", "w") as fh:
            fh.write(f"medkd:{request['argv'][0] if request['argv'] else ''}"[:15])
    except OSError:
        pass
    code = 1
    try:
        from medkd.cli import main

        code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - print the traceback like the interpreter would
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        import atexit

        try:  # what the interpreter would run at exit (os._exit skips it); CPython's own hook for it
            atexit._run_exitfuncs()
        except Exception:  # noqa: BLE001 - an exit handler's failure must not change the job's status
            pass
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(int(code))


def _apply_limits(limits: dict) -> None:
    """Give the job the client's resource limits (soft and hard, as far as this process may)."""
    import resource

    for name, (soft, hard) in limits.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):  # a hard limit above ours cannot be raised: keep the soft one at least
            try:
                resource.setrlimit(which, (soft, resource.getrlimit(which)[1]))
            except (ValueError, OSError):
                pass


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (no pid: assume yes)."""
    from medkd.io import pid_alive

    return True if not pid else pid_alive(pid)


def _handle(conn: socket.socket, owner: int | None = None) -> None:
    """In the forked handler: receive the request, fork the job, wait for it, for the client to go or
    for the ``owner`` (Snakemake) to die; in the last two cases the job is killed."""
    msg, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    request = json.loads(_recv_exact(conn, _HEADER.unpack(msg)[0]))
    try:  # the client's pid, so that the job publishes no output once its client is gone (medkd.io)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        request["env"] = {**request["env"], CLIENT_PID_ENV: str(struct.unpack("3i", creds)[0])}
    except (OSError, AttributeError):
        pass
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_job(request, fds)
    for fd in fds:
        os.close(fd)
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ)
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            break
        if sel.select(timeout=0.05) or not _alive(owner):  # client closed, or Snakemake is gone: cancel the job
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
            os._exit(0)
    code = status if status >= 0 else 128 - status  # killed by signal n -> 128 + n, as a shell reports it
    try:
        conn.sendall(struct.pack("!i", code))
    finally:
        os._exit(0)


def _peer_uid(conn: socket.socket) -> int | None:
    try:
        return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
    except (OSError, AttributeError):
        return None


def serve(path: str, parent: int | None = None) -> None:
    """Import :data:`PRELOAD`, listen on ``path`` and fork one handler per connection until the
    ``parent`` process (default: ours) exits or SIGTERM arrives."""
    import importlib

    parent = parent or os.getppid()
    preload = PRELOAD
    if os.environ.get(PRELOAD_VARIABLE) is not None:
        preload = tuple(m for m in os.environ[PRELOAD_VARIABLE].split(",") if m)
    for name in preload:
        if not _alive(parent):  # Snakemake died while we were importing: nothing to serve
            return
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for module, function in WARM:
        try:
            getattr(importlib.import_module(module), function)()
        except Exception:  # a broken schema is reported by the job that reads it, not here
            pass
    # Move everything imported so far to the collector's permanent generation (CPython's advice for servers
    # that fork without exec): a forked job's full collections then skip these ~570,000 objects instead of
    # writing to (and so copying) the pages that hold them. Measured: a full collection in a forked job 0.5 s
    # and 37,000 page faults -> 0.02 s and 530; an inference job 1.10 -> 1.01 s.
    gc.freeze()
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # clients only ever see a socket that is listening
    server.listen(128)
    server.settimeout(0.2)  # how soon SIGTERM (the end of the run) is noticed
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    try:
        while not stop:
            try:
                os.waitpid(-1, os.WNOHANG)  # reap finished handlers
            except ChildProcessError:
                pass
            if os.getppid() != parent:
                break
            try:
                conn, _ = server.accept()
            except (socket.timeout, InterruptedError):
                continue
            if _peer_uid(conn) != os.getuid():  # a job runs with its client's environment: ours only
                print(f"medkd forkserver: refused a client of uid {_peer_uid(conn)}", file=sys.stderr, flush=True)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                server.close()
                try:
                    _handle(conn, parent)
                finally:
                    os._exit(1)
            conn.close()
    finally:
        server.close()
        if os.path.exists(path):
            os.unlink(path)
        folder = os.path.dirname(path)
        if os.path.basename(folder).startswith("medkd-forkserver-"):  # start_for_run's private directory
            try:
                os.rmdir(folder)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1], int(argv[2]) if len(argv) > 2 else None)
        return 0
    if len(argv) >= 3 and argv[0] == "run" and argv[2] == "--":
        code = run_client(argv[1], argv[3:])
        if code is None:  # no server: this interpreter becomes the step
            os.execv(sys.executable, [sys.executable, "-m", "medkd", *argv[3:]])
        return code
    print("usage: python -m medkd.forkserver serve SOCKET [PARENT_PID] | run SOCKET -- ARGS...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
