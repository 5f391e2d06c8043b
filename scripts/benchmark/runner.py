"""The parent's side of the benchmark: pinned child processes, and every run of every phase.

Every server and client is a separate process pinned with ``os.sched_setaffinity`` to a CPU.
Servers are ``scripts/echo_server.py`` (greenockam) and ``bench.py --role raw-server``; clients
are ``bench.py --role client`` (:mod:`.roles`) and ``bench.py --role codec`` (:mod:`.codec`).
The hub phase runs ``scripts/hub.py`` and ``bench.py --role hub-echoer`` as its servers.
:func:`run_all` runs them interleaved (raw, greenockam, raw, greenockam, ...) and returns every
run's result, keyed by ``(impl, phase)``, for :mod:`.report`. A hang or a crash of any process is
a :class:`.common.BenchError`; every process is killed with the parent, even a SIGKILLed one.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from .common import BenchError, Runs, raise_nofile

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(SCRIPTS, "bench.py")
ECHO_SERVER = os.path.join(SCRIPTS, "echo_server.py")
HUB = os.path.join(SCRIPTS, "hub.py")

SIZES = {
    # figure: (full, quick)
    "rtt_n": (20000, 5000),
    "rtt_warm": (2000, 500),
    "pipelined_n": (200000, 50000),
    # One secure channel carries a whole secure_pipelined run: its warm-up (100) and these stay
    # below the 65,535 messages a handshake allows (the secure_rtt phase uses rtt_n, rtt_warm).
    "secure_pipelined_n": (60000, 50000),
    "conns": (100, 100),
    "per_conn": (500, 100),
    "idle_n": (10000, 10000),
    # Connections opened before the server's RSS is first read. They use up the memory its start
    # left free (compiling modules without .pyc files leaves about 1 MB), which otherwise the
    # measured ones take first: with 100, the same code measured about 1,340 B per connection
    # started from source and 1,420 B from .pyc files; with 5,000, 1,350 B both ways.
    "idle_warm": (5000, 5000),
    "codec_number": (200000, 50000),
    "reps": (3, 1),
}

# Phases in the order they run in each repetition; rtt_server is the raw client against the
# greenockam server only (its baseline is the raw rtt run of the same repetition); hub and the
# secure phases are greenockam only, their baseline measured by the same client in the same run.
PHASES = ("rtt", "rtt_server", "pipelined", "conns", "idle", "hub", "secure_rtt",
          "secure_pipelined")
GKO_ONLY = ("rtt_server", "hub", "secure_rtt", "secure_pipelined")


def sizes(quick: bool) -> Dict[str, int]:
    """The size of every phase, for a full or a quick run."""
    return {k: v[1] if quick else v[0] for k, v in SIZES.items()}


def _set_pdeathsig() -> None:
    """Children die with the orchestrator even if it is SIGKILLed (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Proc:
    """A pinned child process with line reads that time out."""

    live: List[Proc] = []

    def __init__(self, name: str, argv: List[str], cpu: int, stdin: bool = False) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile()

        def pre() -> None:
            os.setsid()
            _set_pdeathsig()
            os.sched_setaffinity(0, {cpu})
            raise_nofile()

        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=0,
            preexec_fn=pre,
            cwd=os.path.dirname(SCRIPTS),
        )
        self.pid = self.popen.pid
        self._buf = b""
        Proc.live.append(self)

    def readline(self, timeout: float) -> str:
        """The next line of stdout; BenchError on timeout or EOF."""
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()  # type: ignore[union-attr]
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: no output within {timeout} s{self.tail()}")
                if sel.select(left):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        self.popen.wait(5)
                        raise BenchError(
                            f"{self.name} exited with status {self.popen.returncode} "
                            f"before writing a line{self.tail()}"
                        )
                    self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def write(self, text: str) -> None:
        self.popen.stdin.write(text.encode())  # type: ignore[union-attr]
        self.popen.stdin.flush()  # type: ignore[union-attr]

    def result(self, timeout: float) -> Dict[str, Any]:
        """Read the JSON line a client prints last, and wait for it to exit 0."""
        line = self.readline(timeout)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} did not exit{self.tail()}") from None
        if self.popen.returncode != 0:
            raise BenchError(f"{self.name} failed with status {self.popen.returncode}{self.tail()}")
        self.close()
        return json.loads(line)

    def tail(self) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode(errors="replace")[-3000:]
        except (OSError, ValueError):
            return ""
        return f"\n--- {self.name} stderr (tail) ---\n{text}" if text.strip() else ""

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise BenchError(f"no VmRSS for {self.name}")

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # it leads its own session (setsid)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.close()

    def close(self) -> None:
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        if self in Proc.live:
            Proc.live.remove(self)


def kill_all() -> None:
    """Kill every process started here that is still running."""
    for proc in list(Proc.live):
        proc.kill()


def git_describe() -> Optional[str]:
    """The commit of the tree measured, with "+dirty" if greenockam/ has uncommitted changes."""
    root = os.path.dirname(SCRIPTS)
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, timeout=10,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "greenockam"], cwd=root,
                               timeout=10, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def start_server(impl: str, cpu: int, timeout: float) -> Tuple[Proc, str]:
    """Start the raw or the greenockam echo server on 127.0.0.1, port 0, pinned to ``cpu``;
    return it and the HOST:PORT it listens on."""
    if impl == "raw":
        argv = [sys.executable, BENCH, "--role", "raw-server", "--addr", "127.0.0.1:0"]
        prefix = "raw_echo listening on "
    else:
        argv = [sys.executable, ECHO_SERVER, "127.0.0.1:0", "--log-level", "WARNING"]
        prefix = "echo_service listening on "
    proc = Proc(f"{impl} server", argv, cpu)
    return proc, _ready_line(proc, prefix, timeout)


def client_argv(impl: str, phase: str, addr: str, timeout: float, **kw: Any) -> List[str]:
    """The command line of the client role measuring ``phase`` against ``addr``."""
    argv = [sys.executable, BENCH, "--role", "client", "--impl", impl, "--phase", phase,
            "--addr", addr, "--timeout", str(timeout)]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_phase(impl: str, phase: str, cpus: Tuple[int, int], sizes: Dict[str, int],
              timeout: float) -> Dict[str, Any]:
    """One run of ``phase`` with ``impl`` (raw or gko): start its server and its client, return
    the client's result (for idle, with the server's RSS growth per connection added). The
    greenockam server is also the secure phases' responder."""
    server, addr = start_server(impl, cpus[0], 30)
    client_impl = impl
    if phase == "rtt_server":  # raw client, greenockam server
        client_impl, phase = "raw", "rtt"
    try:
        if phase in ("rtt", "secure_rtt"):
            kw = {"n": sizes["rtt_n"], "warm": sizes["rtt_warm"], "server_pid": server.pid}
        elif phase == "pipelined":
            kw = {"n": sizes["pipelined_n"], "server_pid": server.pid}
        elif phase == "secure_pipelined":
            kw = {"n": sizes["secure_pipelined_n"], "server_pid": server.pid}
        elif phase == "conns":
            kw = {"conns": sizes["conns"], "per_conn": sizes["per_conn"], "server_pid": server.pid}
        else:
            kw = {"n": sizes["idle_n"], "warm": sizes["idle_warm"]}
        client = Proc(f"{client_impl} {phase} client",
                      client_argv(client_impl, phase, addr, timeout, **kw),
                      cpus[1], stdin=(phase == "idle"))
        try:
            if phase != "idle":
                return client.result(timeout + 30)
            line = client.readline(timeout)
            if not line.startswith("warm "):
                raise BenchError(f"{client.name}: unexpected line {line!r}")
            before = server.rss_kb()
            client.write("go\n")
            line = client.readline(timeout)
            if not line.startswith("connected "):
                raise BenchError(f"{client.name}: unexpected line {line!r}")
            after = server.rss_kb()
            if server.popen.poll() is not None:
                raise BenchError(f"{server.name} died{server.tail()}")
            client.write("done\n")
            result = client.result(timeout)
            result.update(
                rss_before_kb=before,
                rss_after_kb=after,
                bytes_per_conn=(after - before) * 1024 / sizes["idle_n"],
            )
            return result
        finally:
            client.kill()
    finally:
        server.stop()


def run_hub_phase(cpus: Tuple[int, int], sizes: Dict[str, int], timeout: float) -> Dict[str, Any]:
    """One run of the hub phase: the hub (``scripts/hub.py``, its defaults: random marks and
    confinement) and the hub echoer on the server CPU, the client on the client CPU; returns
    the client's result (:func:`.roles.client_hub`)."""
    hub = Proc("hub", [sys.executable, HUB, "127.0.0.1:0", "--log-level", "WARNING"], cpus[0])
    procs = [hub]
    try:
        hub_addr = _ready_line(hub, "hub listening on ", 30)
        echoer = Proc("hub echoer", [sys.executable, BENCH, "--role", "hub-echoer", "--addr",
                                     "127.0.0.1:0", "--hub", hub_addr], cpus[0])
        procs.append(echoer)
        addr, _, forwarder = _ready_line(echoer, "hub_echoer listening on ", 30).partition(
            " forwarder "
        )
        client = Proc("gko hub client",
                      client_argv("gko", "hub", addr, timeout, n=sizes["pipelined_n"],
                                  server_pid=hub.pid, hub=hub_addr, forwarder=forwarder),
                      cpus[1])
        procs.append(client)
        return client.result(timeout + 30)
    finally:
        for proc in reversed(procs):
            proc.stop()


def _ready_line(proc: Proc, prefix: str, timeout: float) -> str:
    """What follows ``prefix`` on ``proc``'s first line."""
    line = proc.readline(timeout)
    if not line.startswith(prefix):
        raise BenchError(f"{proc.name}: unexpected first line {line!r}{proc.tail()}")
    return line[len(prefix) :].strip()


def run_codec_phase(cpu: int, number: int, timeout: float) -> Dict[str, Any]:
    """One run of the codec role pinned to ``cpu``: its fields (:func:`.codec.measure`)."""
    proc = Proc("codec", [sys.executable, BENCH, "--role", "codec", "--n", str(number)], cpu)
    try:
        return proc.result(timeout)
    finally:
        proc.kill()


def run_all(reps: int, cpus: Tuple[int, int], sizes: Dict[str, int], timeout: float) -> Runs:
    """Every phase of every repetition, raw then greenockam, then the codec role; one progress
    line per run. Returns the results by ``(impl, phase)``, in the order they ran; the codec's
    are under ``("gko", "codec")``."""
    runs: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for rep in range(reps):
        for phase in PHASES:
            for impl in ("gko",) if phase in GKO_ONLY else ("raw", "gko"):
                t0 = time.monotonic()
                if phase == "hub":
                    r = run_hub_phase(cpus, sizes, timeout)
                else:
                    r = run_phase(impl, phase, cpus, sizes, timeout)
                runs.setdefault((impl, phase), []).append(r)
                shown = (
                    f"{r['bytes_per_conn']:,.0f} B/conn" if phase == "idle"
                    else f"{r['per_s']:,.0f} msg/s"
                )
                if "ratio" in r:
                    shown += f", {r['ratio']:.3f}x"
                print(f"  rep {rep + 1} {phase:16} {impl:4} {shown:>26}  "
                      f"({time.monotonic() - t0:.1f} s)", flush=True)
        codec = run_codec_phase(cpus[1], sizes["codec_number"], timeout)
        runs.setdefault(("gko", "codec"), []).append(codec)
        print(f"  rep {rep + 1} codec                 {codec['roundtrip_ns']:,.0f} ns enc+dec",
              flush=True)
    return runs
