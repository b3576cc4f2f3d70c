"""Run this Flower app on loopback: a SuperLink (simulation or deployment), SuperNodes, ``flwr run``, cleanup.

Used by ``meanet federate`` and by the tests. Every process started here runs in its own session and is ended
(SIGTERM, then SIGKILL) whatever happens. Flower's ``flwr run --stream`` exits 0 even when the run failed, so the
status is read back with ``flwr ls`` (polled until the run has finished).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

APP_DIR = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FlowerRun:
    run_id: str
    status: str  # "finished:completed" on success
    details: str
    logs: str
    home: Path

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def _env(home: Path) -> dict[str, str]:
    return dict(
        os.environ,
        FLWR_HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower spawns its helpers by bare name
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",  # use this environment, never `uv sync` per run
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End ``proc`` and everything it started: its process group and every descendant, which may sit in sessions of
    their own (the SuperLink's SuperExec starts ``flwr-simulation``, which starts Ray's processes)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for p in family:
        with suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(family, timeout=20)
    for p in alive:
        with suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not start ({e}); its log:\n{log.read_text()[-3000:]}") from e
            time.sleep(0.25)


@contextmanager
def loopback_federation(
    *, simulation: bool, num_supernodes: int = 0, home: Path | None = None
) -> Iterator[tuple[str, Path, list[subprocess.Popen[bytes]]]]:
    """A SuperLink (and for deployment ``num_supernodes`` SuperNodes) on 127.0.0.1; yields (connection, home, procs)."""
    home = home or Path(tempfile.mkdtemp(prefix="meanet-flwr-"))
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    name = "sim" if simulation else "deploy"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = _env(home)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        link_log = home / "superlink.log"
        cmd = [str(VENV_BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation"]
        cmd += ["--simulation"] if simulation else []
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--database", str(home / "state.db")]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=link_log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        )
        _wait_healthy(port, procs[0], link_log)
        for i in range(0 if simulation else num_supernodes):
            node_cmd = [
                str(VENV_BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--node-config", f"partition-id={i} num-partitions={num_supernodes}",
                "--host", "127.0.0.1", "--port", str(free_port()),
            ]  # fmt: skip
            log = (home / f"supernode-{i}.log").open("wb")
            procs.append(
                subprocess.Popen(node_cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        yield name, home, procs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def flwr_run(
    connection: str,
    home: Path,
    run_config: dict[str, object],
    *,
    federation_config: str | None = None,
    app_dir: Path = APP_DIR,
    timeout: float = 3600,
    stream_to_stdout: bool = False,
) -> FlowerRun:
    """``flwr run APP CONNECTION``, then wait until the run ends; returns its final status and logs.

    With ``stream_to_stdout`` the run's log (the server's progress lines) is printed as it happens. A run still going
    after ``timeout`` seconds is stopped (``flwr stop``) and reported with its status at that point.
    """
    env = _env(home)
    flwr = str(VENV_BIN / "flwr")
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    cmd = [flwr, "run", str(app_dir), connection, "--format", "json"]
    cmd += ["--federation-config", federation_config] if federation_config else []
    cmd += ["--run-config", overrides] if overrides else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    try:
        run_id = str(json.loads(out.stdout)["run-id"])
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"flwr run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}") from e
    streamer = None
    if stream_to_stdout:  # `flwr log --stream` follows the run's log until the run ends
        streamer = subprocess.Popen([flwr, "log", run_id, connection, "--stream"], env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    # Each `flwr ls` is a fresh Python process (about a second of CPU): polled every 2 s it took a quarter of a core
    # from the run on 2-core machines. The interval grows to 15 s; the end of the log stream triggers a poll at once.
    interval = 2.0
    try:
        while True:
            run = _run_info(flwr, connection, run_id, env)
            if str(run["status"]).startswith("finished") or time.monotonic() > deadline:
                break
            wake = time.monotonic() + interval
            streaming = streamer is not None and streamer.poll() is None
            while time.monotonic() < wake and not (streaming and _ended(streamer)):
                time.sleep(0.25)
            interval = min(15.0, interval * 1.5)
        if not str(run["status"]).startswith("finished"):
            subprocess.run([flwr, "stop", run_id, connection], env=env, capture_output=True, text=True, timeout=60)
            run = {**run, "status-details": f"stopped after {timeout:.0f}s (timeout); was {run['status']}"}
    finally:
        if streamer is not None:
            with suppress(subprocess.TimeoutExpired):
                streamer.wait(timeout=10)
            _stop(streamer)
    logs = subprocess.run([flwr, "log", run_id, connection, "--show"], env=env, capture_output=True, text=True).stdout
    return FlowerRun(run_id, str(run["status"]), str(run.get("status-details", "")), logs, home)


def _ended(proc: subprocess.Popen[bytes] | None) -> bool:
    return proc is not None and proc.poll() is not None


def _run_info(flwr: str, connection: str, run_id: str, env: dict[str, str]) -> dict[str, object]:
    ls = subprocess.run(
        [flwr, "ls", connection, "--run-id", run_id, "--format", "json"], env=env, capture_output=True, text=True
    )
    try:
        return dict(json.loads(ls.stdout)["runs"][0])
    except (ValueError, KeyError, IndexError) as e:
        raise RuntimeError(f"flwr ls gave no status for run {run_id}:\n{ls.stdout[-2000:]}\n{ls.stderr[-2000:]}") from e


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return str(value)


def run_simulation(
    run_config: dict[str, object],
    num_supernodes: int,
    *,
    timeout: float = 3600,
    home: Path | None = None,
    stream_to_stdout: bool = False,
) -> FlowerRun:
    """The app on Flower's simulation engine (Ray), one CPU per ClientApp."""
    with loopback_federation(simulation=True, home=home) as (conn, flwr_home, _):
        return flwr_run(
            conn,
            flwr_home,
            run_config,
            federation_config=f"num-supernodes={num_supernodes} client-resources-num-cpus=1",
            timeout=timeout,
            stream_to_stdout=stream_to_stdout,
        )


def run_deployment(
    run_config: dict[str, object],
    num_supernodes: int,
    *,
    timeout: float = 3600,
    home: Path | None = None,
    stream_to_stdout: bool = False,
) -> FlowerRun:
    """The app on Flower's deployment engine: a SuperLink and ``num_supernodes`` SuperNodes on loopback."""
    with loopback_federation(simulation=False, num_supernodes=num_supernodes, home=home) as (conn, flwr_home, _):
        return flwr_run(conn, flwr_home, run_config, timeout=timeout, stream_to_stdout=stream_to_stdout)


__all__: Sequence[str] = ["FlowerRun", "loopback_federation", "run_deployment", "run_simulation"]
