"""`postern serve` with `[server] workers` > 1: a supervisor and its workers.

The supervisor is the process systemd starts. It takes the data_dir lock, binds every
listening socket (gateway.process.startup.SharedListeners: for each SMTP address one socket
per worker in a SO_REUSEPORT group, HTTP once), then starts each worker as a fresh
`python -m gateway.process.cli serve` (not a fork: the parent holds no event loop, threads
or database connections a child could inherit half-made) with its sockets as inherited
descriptors and its role in `POSTERN_WORKER`. Each worker is a whole `Service`: its own
event loop, database connections and group-commit writer, SMTP door and delivery workers
claiming from storage under its own node id (`<node>-w<index>`), as separate nodes do.
Worker 0 alone serves HTTP and runs what one process per node runs (Service.primary).

What the supervisor does after that:
- **Logs**: each worker's stderr is a pipe it reads and writes to its own stderr, as many
  whole lines as one read brings in one write, so the mail log stays one stream of whole
  lines.
- **Metrics**: prometheus-client's multiprocess mode, in a private temporary folder
  (`PROMETHEUS_MULTIPROC_DIR`, removed at exit; named in data_dir/metrics-folder, so that
  the one a supervisor killed with SIGKILL left is removed at the next start); worker 0's
  /metrics sums every worker's.
- **SQLite's writes** (with a database file): one writer process per node
  (gateway.process.node_writer, storage.writer_process) commits the workers' small writes
  together, one fsync for all, where each worker's own commits took the write lock in
  turn. Its listening socket is bound here, in the metrics folder, and kept: a worker's
  connection queues on it while the process is started again (at once the first time,
  then as a worker is). It is started first and stopped last, once every worker is gone.
- **The per-key rate limit**: one table of token buckets in shared memory (an anonymous
  memfd, made here and inherited by every worker: gateway.security.shared_rate), so a key's
  SMTP messages in any worker and its HTTP requests in worker 0 draw on one bucket.
- **A worker that dies** is started again, at once the first time, then after a delay that
  doubles with each death within a minute (up to 30 s). Its sockets stayed open here, so the
  connections the kernel queued on them wait for the new worker instead of being refused.
  The new worker releases what its node id claimed, so its messages are delivered again
  (at-least-once, as after any crash).
- **Start**: it answers for the workers: if one fails to start, the others are stopped and
  `serve` exits with that worker's status (2 for what an operator must fix), its error line
  written once.
- **SIGTERM / SIGINT**: passed to every worker (as SIGTERM), which drains as a lone `serve`
  does; the supervisor closes its copies of the sockets (so that nothing more queues on them) and
  exits 0 once every worker exited 0. A second signal is passed on as SIGUSR1 (the workers
  exit at once; a repeated SIGTERM, which systemd's default KillMode=control-group sends
  them beside ours, only continues their drain). **SIGHUP** is passed on: each worker
  reloads `[[pools]]` and `[policy]`.
- If the supervisor itself is killed, the kernel ends the workers (PR_SET_PDEATHSIG). They
  inherit the data_dir lock, so it is held until the last is gone: a `serve` started at once
  waits for them (gateway.process.instance) rather than finding their ports still taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.config import Config
from gateway.process.instance import DataDirLock
from gateway.process.logs import FORMAT, ZonedFormatter
from gateway.process.startup import ROLE_ENV, SharedListeners, StartupError, node_id
from gateway.security.secrets import SecretBox, SecretError
from gateway.security.shared_rate import create_table
from storage.paths import database_url, prepare_data_dir, sqlite_file
from storage.writer_process import HANG_LIMIT, HUNG

log = logging.getLogger("postern.supervisor")

START_TIMEOUT = 300.0  # a worker's start may include a schema upgrade
STOP_GRACE = 15.0  # past the drain timeout, a worker still running is killed
CRASH_WINDOW = 60.0  # deaths within this count towards the restart delay
FIRST_DELAY = 0.25
MAX_DELAY = 30.0
# The writer process dying this often within CRASH_WINDOW is given up: its socket is closed
# and the workers write on their own (as before it existed), rather than wait on its delays.
WRITER_DEATHS = 5
LINE_LIMIT = 1 << 20  # a longer stderr line is cut (split) rather than stalling the pipe
READY = b"postern-worker-ready\n"
ERROR_PREFIX = b"postern: error:"
PUMP_READ = 1 << 16  # bytes of a worker's output read at a time


METRICS_PREFIX = "postern-metrics-"
# In data_dir: the metrics folder of the supervisor running, or of the last one if it was
# killed (SIGKILL leaves the folder behind): the next start removes that folder.
METRICS_NOTE = "metrics-folder"


def fresh_metrics_folder(data_dir: Path) -> str:
    """A new private folder for the workers' metrics files and the writer process's socket,
    named in data_dir, once the one an earlier supervisor named there is removed: a real
    folder of ours, with our prefix, named by this very data_dir (a copy of it names the
    original's folder, perhaps in use). We hold the data_dir lock: that supervisor's
    workers, which held it too, are gone (its writer process, which does not hold it, may
    still be dying: its socket going does it no harm)."""
    note = data_dir / METRICS_NOTE
    here = _identity(data_dir)
    named, written_for = _noted(data_dir)
    if named and written_for == here:
        _remove_if_ours(Path(named))
    folder = tempfile.mkdtemp(prefix=METRICS_PREFIX)
    try:
        draft = note.with_name(f".{METRICS_NOTE}.{os.getpid()}")
        draft.write_text(f"{folder} {here}\n")
        os.replace(draft, note)
    except OSError as error:  # (unnamed, it is still removed at the stop, not after a kill)
        log.warning("supervisor: cannot write %s: %s", note, error.strerror)
    return folder


def _remove_if_ours(old: Path) -> None:
    """`old` removed if it is a real folder of ours (a link is not followed) with our
    prefix."""
    with contextlib.suppress(OSError, ValueError):
        found = old.lstat()
        ours = stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid()
        if ours and old.name.startswith(METRICS_PREFIX):
            shutil.rmtree(old, ignore_errors=True)


def _identity(data_dir: Path) -> str:
    """data_dir's device and inode: a copy of it (rsync, cp -a) has others."""
    found = os.stat(data_dir)
    return f"{found.st_dev}:{found.st_ino}"


def _noted(data_dir: Path) -> tuple[str, str]:
    """The folder named in data_dir and the data_dir identity it was named for ("" each
    when there is no note, or it cannot be read)."""
    try:
        named, _, written_for = (data_dir / METRICS_NOTE).read_text().strip().rpartition(" ")
    except (OSError, ValueError):
        return "", ""
    return named, written_for


def named_metrics_folder(data_dir: Path) -> str | None:
    """The folder named in data_dir (the running supervisor's, or the last one's)."""
    return _noted(data_dir)[0] or None


def remove_metrics_folder(data_dir: Path, folder: str) -> None:
    """At the stop: the folder, and its name in data_dir."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        (data_dir / METRICS_NOTE).unlink()


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    deaths: list[float] = field(default_factory=list)  # monotonic times, within CRASH_WINDOW
    stopped: bool = False  # this process was sent its stop signal
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        config: Config,
        config_path: str | None,
        log_level: str,
        drain_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.log_level = log_level
        self.drain_timeout = drain_timeout
        self.count = config.server.workers
        self.workers = [Worker(index) for index in range(self.count)]
        self._listeners: SharedListeners | None = None
        self._lock: DataDirLock | None = None
        self._metrics_dir: str | None = None
        self._rates: int | None = None  # the per-key rate table's memfd, for every worker
        # The node's writer process (SQLite) and its listening socket (in the metrics
        # folder: private, removed at exit, one folder for the supervisor's own files).
        self._writer = Worker(-1)
        self._writer_socket: socket.socket | None = None
        self._stopping = asyncio.Event()
        self._signals = 0
        self._errors_said: set[bytes] = set()  # a start error all workers hit: said once
        self._out_lock = asyncio.Lock()

    # --- run ------------------------------------------------------------------------

    async def run(self) -> int:
        """Start the workers, keep them running until a stop signal, drain them; the exit
        status (a StartupError of the supervisor's own is raised, as a lone serve's is)."""
        _log_to_stderr(self.log_level)
        data_dir = self.config.server.data_dir
        try:
            prepare_data_dir(data_dir)
            lock = self._lock = DataDirLock.acquire(data_dir)
        except OSError as error:
            raise StartupError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
        try:
            # Made once, here, before any worker reads them: two workers' first start would
            # otherwise each write a node id of its own (the secret key is created without
            # clobbering, but is checked once here, for one error line).
            try:
                node_id(data_dir)
            except OSError as error:
                raise StartupError(f"cannot use data_dir {data_dir}: {error.strerror}") from None
            try:
                SecretBox.from_environment(data_dir)
            except SecretError as error:
                raise StartupError(str(error)) from None
            self._listeners = SharedListeners.bind(self.config, self.count)
            self._metrics_dir = fresh_metrics_folder(data_dir)
            self._rates = _rate_table()
            return await self._supervise()
        finally:
            self._close_writer_socket()
            if self._rates is not None:
                os.close(self._rates)
            if self._listeners is not None:
                self._listeners.close()
            if self._metrics_dir is not None:
                remove_metrics_folder(data_dir, self._metrics_dir)
            lock.release()

    async def _supervise(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        keeper = await self._start_writer()
        try:
            status = await self._start_all()
            if status is not None:
                return status
            log.info("supervisor: %d workers running", self.count)
            watchers = [loop.create_task(self._watch(worker)) for worker in self.workers]
            await self._stopping.wait()
            return await self._drain(watchers)
        finally:
            await self._stop_writer(keeper)

    async def _start_all(self) -> int | None:
        """Every worker started and ready: None. One failed: the others stopped, its status.
        Worker 0 starts first and alone: what a first start writes (the schema, its upgrade,
        the secret key's binding, the file's pools) is then written once, by it; the others
        start together once it is ready and find it all there."""
        first = await self._start(self.workers[:1])
        if first is not None or self.count == 1:
            return first
        if self._stopping.is_set():  # a stop signal as worker 0 became ready
            await self._stop_workers(None, wait=self.drain_timeout + STOP_GRACE)
            return self._status()
        return await self._start(self.workers[1:])

    async def _start(self, workers: list[Worker]) -> int | None:
        for worker in workers:
            await self._spawn(worker)
        waits = {asyncio.ensure_future(self._ready_or_exit(worker)): worker for worker in workers}
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(waits)
        while pending:
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )  # fmt: skip
            failed = [waits[task] for task in done if not task.result()]
            if not done:  # timed out
                failed = [waits[task] for task in pending]
                for worker in failed:
                    log.error("supervisor: worker %d did not start in time", worker.index)
            if failed or self._stopping.is_set():
                for task in pending:
                    task.cancel()
                # A stop signal was passed on already: a second one would end the workers
                # without their drain.
                again = None if self._stopping.is_set() else signal.SIGTERM
                await self._stop_workers(again, wait=self.drain_timeout + STOP_GRACE)
                if self._stopping.is_set():  # stopped while starting: what we asked for
                    return self._status()
                code = failed[0].proc.returncode if failed[0].proc else None
                return code if code and code > 0 else 1
        return None

    async def _ready_or_exit(self, worker: Worker) -> bool:
        assert worker.proc is not None
        ready = asyncio.ensure_future(worker.ready.wait())
        exited = asyncio.ensure_future(worker.proc.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if exited.done():
            await asyncio.gather(*worker.pumps, return_exceptions=True)  # its last words
            return False
        exited.cancel()
        return True

    # --- one worker -----------------------------------------------------------------

    async def _spawn(self, worker: Worker) -> None:
        assert self._listeners is not None and self._metrics_dir is not None
        role = self._listeners.role(worker.index, self.count, self._rates)
        if self._writer_socket is not None:
            role = replace(role, writer=self._writer_socket.getsockname())
        env = dict(os.environ)
        env[ROLE_ENV] = role.to_env()
        env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        argv = [sys.executable, "-m", "gateway.process.cli", "serve"]
        argv += ["--log-level", self.log_level]
        if self.config_path:
            argv += ["--config", os.path.abspath(self.config_path)]
        extra = (role.http, role.metrics, role.bounce, role.rates)
        fds = [*role.smtp, *(fd for fd in extra if fd is not None)]
        if self._lock is not None:
            fds.append(self._lock.fileno())  # held by the worker too, until it is gone
        worker.ready = asyncio.Event()
        worker.stopped = False
        proc = await self._launch(worker, argv, fds, env)
        log.info("supervisor: worker %d started (pid %d)", worker.index, proc.pid)
        if self._stopping.is_set():  # the stop signal came while it was being made
            self._signal(worker, signal.SIGTERM)

    async def _launch(
        self, worker: Worker, argv: list[str], fds: list[int], env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        """Start `worker`'s process (a worker, the writer process) with `fds` inherited, its
        output passed on into ours by two pumps."""
        proc = worker.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            pass_fds=fds,
            start_new_session=True,  # a Ctrl-C reaches the supervisor alone, which passes it on
            limit=LINE_LIMIT,
        )
        assert proc.stdout is not None and proc.stderr is not None
        loop = asyncio.get_running_loop()
        worker.pumps = [
            loop.create_task(self._pump(worker, proc.stdout, sys.stdout.buffer)),
            loop.create_task(self._pump(worker, proc.stderr, sys.stderr.buffer)),
        ]
        return proc

    async def _pump(self, worker: Worker, stream: asyncio.StreamReader, out: object) -> None:
        """One worker's output to ours in whole lines, as many as one read brings (two
        mail-log lines a message: a readline, a write and a flush for each cost the
        supervisor 0.06 ms of CPU per message); the end of a line still on its way waits
        for the rest, up to LINE_LIMIT. Its ready line sets `ready`."""
        pending = b""
        while True:
            chunk = await stream.read(PUMP_READ)
            if not chunk:
                if pending:
                    self._pass_lines(worker, pending, out)
                return
            data = pending + chunk if pending else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) < LINE_LIMIT:
                    pending = data
                    continue
                cut = len(data)  # longer than LINE_LIMIT: passed on in pieces
            pending = data[cut:]
            self._pass_lines(worker, data[:cut], out)

    def _pass_lines(self, worker: Worker, lines: bytes, out: object) -> None:
        """Whole lines to `out` in one write, a worker's ready line and any start error
        already said taken out; a last line without its newline gets one."""
        if READY in lines or ERROR_PREFIX in lines:
            kept = []
            for line in io.BytesIO(lines).readlines():  # split at LF alone
                if line == READY:
                    worker.ready.set()
                    continue
                if line.startswith(ERROR_PREFIX):
                    if line in self._errors_said:
                        continue
                    self._errors_said.add(line)
                kept.append(line)
            lines = b"".join(kept)
        if not lines:
            return
        if not lines.endswith(b"\n"):
            lines += b"\n"
        _write_line(out, lines)

    async def _watch(self, worker: Worker) -> None:
        """Start the worker again whenever it dies, with a delay growing on a crash loop."""
        while True:
            assert worker.proc is not None
            await worker.proc.wait()
            await asyncio.gather(*worker.pumps, return_exceptions=True)
            self._forget_metrics(worker.proc.pid)
            if self._stopping.is_set():
                return
            delay = _restart_delay(worker)
            log.error(
                "supervisor: worker %d (pid %d) %s; starting it again%s",
                worker.index, worker.proc.pid, _how_it_ended(worker.proc.returncode),
                f" in {delay:g}s" if delay else "",
            )  # fmt: skip
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            if self._stopping.is_set():
                return
            await self._spawn(worker)

    # --- the node's writer process ---------------------------------------------------

    async def _start_writer(self) -> asyncio.Task[None] | None:
        """Bind its socket and start it (SQLite, several workers); the task keeping it."""
        database = self._writer_database()
        if database is None:
            return None
        try:
            assert self._metrics_dir is not None
            self._writer_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._writer_socket.bind(os.path.join(self._metrics_dir, "writer.sock"))
            self._writer_socket.listen(64)
            await self._spawn_writer(database)
        except (OSError, RuntimeError) as error:  # (a TMPDIR too long for a socket's path)
            log.warning(
                "supervisor: no writer process (%s); the workers write the database on "
                "their own", getattr(error, "strerror", None) or error,
            )  # fmt: skip
            self._close_writer_socket()
            return None
        return asyncio.get_running_loop().create_task(self._keep_writer(database))

    def _writer_database(self) -> str | None:
        if self.count < 2:
            return None
        url = database_url(self.config.storage.url, self.config.server.data_dir)
        database = sqlite_file(url)
        return None if database is None else os.path.abspath(database)

    async def _spawn_writer(self, database: str) -> None:
        assert self._writer_socket is not None
        fd = self._writer_socket.fileno()
        argv = [
            sys.executable, "-m", "gateway.process.node_writer", "--parent", str(os.getpid()),
            "--fd", str(fd), "--database", database, "--log-level", self.log_level,
        ]  # fmt: skip
        await self._launch(self._writer, argv, [fd])

    async def _keep_writer(self, database: str) -> None:
        """Start it again whenever it dies (the workers that were waiting on it exit, and
        are started again by their own watchers); give it up when it keeps dying. However
        this ends (but cancelled at the stop), the socket is closed: a line queued on it
        with no process to answer would wait for good."""
        try:
            while await self._writer_died():
                try:
                    await self._spawn_writer(database)
                except (OSError, RuntimeError) as error:  # (fork; a child watcher's thread)
                    log.error("supervisor: cannot start the writer process: %s", error)
                    self._writer.proc = None
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("supervisor: the writer process's keeper failed")
        self._close_writer_socket()

    async def _writer_died(self) -> bool:
        """Wait for the writer process's end; True: start it again (after its delay)."""
        writer = self._writer
        proc = writer.proc
        if proc is not None:
            await proc.wait()
            await asyncio.gather(*writer.pumps, return_exceptions=True)
        delay = _restart_delay(writer)
        which = f"the writer process (pid {proc.pid})" if proc is not None else "the writer process"
        how = _how_it_ended(proc.returncode) if proc is not None else "did not start"
        if proc is not None and proc.returncode in (HUNG, -signal.SIGALRM):  # (its backstop)
            how = f"hung (a commit past {HANG_LIMIT:g}s; its threads' tracebacks above)"
        if len(writer.deaths) >= WRITER_DEATHS:
            log.error(
                "supervisor: %s %s, %d times within %gs: given up; the workers write the "
                "database on their own",
                which, how, len(writer.deaths), CRASH_WINDOW,
            )  # fmt: skip
            return False
        log.error(
            "supervisor: %s %s; starting it again%s",
            which, how, f" in {delay:g}s" if delay else "",
        )  # fmt: skip
        await asyncio.sleep(delay)
        return True

    def _close_writer_socket(self) -> None:
        """No more lines: a worker's connect is refused (it writes on its own), and one
        queued on the socket is reset."""
        if self._writer_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._writer_socket.getsockname())
            self._writer_socket.close()
            self._writer_socket = None

    async def _stop_writer(self, keeper: asyncio.Task[None] | None) -> None:
        """Last, once the workers are gone (SIGUSR1: it ignores SIGTERM, which systemd
        sends every process at once while the workers still write through it)."""
        if keeper is None:
            return
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        proc = self._writer.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                log.error("supervisor: the writer process did not stop; killing it")
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        await asyncio.gather(*self._writer.pumps, return_exceptions=True)

    def _forget_metrics(self, pid: int) -> None:
        """A dead worker's gauges leave the sums; its counters stay in them."""
        if self._metrics_dir is None:
            return
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self._metrics_dir)

    # --- stop -----------------------------------------------------------------------

    def _stop_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("supervisor: %s: stopping the workers (each drains)", sig.name)
            if self._listeners is not None:
                # Nothing more queues on our copies: once each worker closes its own, a
                # connection is refused as with one process.
                self._listeners.close()
            self._stopping.set()
        else:
            log.warning(
                "supervisor: second stop signal (%s): exiting at once, the workers without "
                "draining (messages in flight are retried when a worker starts)",
                sig.name,
            )
        # SIGTERM whichever it was: a worker still importing dies of it quietly, where
        # SIGINT would raise KeyboardInterrupt there, with a traceback. The second is
        # SIGUSR1, "at once": a worker ignores a repeated SIGTERM, since under systemd's
        # default KillMode=control-group it gets systemd's as well as ours.
        self._pass_on(signal.SIGTERM if self._signals == 1 else signal.SIGUSR1)

    def _pass_on(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            self._signal(worker, sig)

    def _signal(self, worker: Worker, sig: signal.Signals) -> None:
        if worker.proc is not None and worker.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)
            if sig == signal.SIGTERM:
                worker.stopped = True

    def _reload(self) -> None:
        """SIGHUP to each worker that has started (one still starting reads the file as it
        starts, and would not survive a SIGHUP before its handler is set)."""
        for worker in self.workers:
            if worker.ready.is_set():
                self._signal(worker, signal.SIGHUP)
            elif worker.proc is not None and worker.proc.returncode is None:
                log.warning(
                    "supervisor: SIGHUP: worker %d is still starting; not passed on", worker.index
                )

    def _status(self) -> int:
        """The exit status once every worker is gone: 1 after a second stop signal or when
        a worker did not end cleanly (0, or SIGTERM before its handler was set)."""
        codes = [w.proc.returncode for w in self.workers if w.proc is not None]
        if self._signals > 1 or any(code not in (0, -signal.SIGTERM) for code in codes):
            log.warning("supervisor: workers exited %s", codes)
            return 1
        log.info("supervisor: stopped")
        return 0

    async def _drain(self, watchers: list[asyncio.Task[None]]) -> int:
        await self._stop_workers(None, wait=self.drain_timeout + STOP_GRACE)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return self._status()

    async def _stop_workers(self, sig: signal.Signals | None, wait: float) -> None:
        """Signal (unless already signalled) and wait for every worker; kill the late."""
        if sig is not None:
            self._pass_on(sig)
        for worker in self.workers:  # made after the signal was passed on
            if not worker.stopped:
                self._signal(worker, signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
        if waits:
            _, late = await asyncio.wait(waits, timeout=wait)
            if late:
                log.error("supervisor: %d worker(s) still running; killing them", len(late))
                for proc in procs:
                    if proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.kill()
                await asyncio.wait(waits, timeout=5.0)
        for worker in self.workers:
            await asyncio.gather(*worker.pumps, return_exceptions=True)


# --- in the worker ----------------------------------------------------------------------


def say_ready() -> None:
    """Tell the supervisor this worker started (its stdout is a pipe the supervisor reads)."""
    os.write(1, READY)


# --- helpers ----------------------------------------------------------------------------


def _rate_table() -> int | None:
    """The workers' one table of per-key buckets (made once here: a worker started again
    finds them as they were). Without it each worker counts its own, as before, said once."""
    try:
        return create_table()
    except OSError as error:
        log.warning(
            "supervisor: no shared rate table (%s): each worker counts the per-key rate "
            "limit on its own",
            error.strerror or error,
        )
        return None


def _restart_delay(worker: Worker) -> float:
    """0 the first time; then doubling with each death within CRASH_WINDOW, to MAX_DELAY."""
    now = time.monotonic()
    worker.deaths = [t for t in worker.deaths if now - t < CRASH_WINDOW] + [now]
    delay = 0.0 if len(worker.deaths) == 1 else FIRST_DELAY * 2 ** (len(worker.deaths) - 2)
    return min(MAX_DELAY, delay)


def _write_line(out: object, line: bytes) -> None:
    with contextlib.suppress(OSError, ValueError):
        out.write(line)  # type: ignore[attr-defined]
        out.flush()  # type: ignore[attr-defined]


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "is gone"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _LineHandler(logging.Handler):
    """The supervisor's own records, written on its event loop's thread like the workers'
    lines, whole, never interleaved with them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a broken record must not end the supervisor
            self.handleError(record)
            return
        _write_line(sys.stderr.buffer, (text.replace("\n", "\n  | ") + "\n").encode())


def _log_to_stderr(level: str) -> None:
    handler = _LineHandler()
    handler.setFormatter(ZonedFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
