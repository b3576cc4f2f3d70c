"""Run this Flower app on loopback: a SuperLink (simulation or deployment), SuperNodes, ``flwr run``, cleanup.

Used by ``meanet federate`` (meanet_cli), the tests and the benchmarks: it sits below them all. Every process started
here runs in its own session and is ended (SIGTERM, then SIGKILL) whatever happens. Flower's ``flwr run --stream``
exits 0 even when the run failed, so the status is read back with ``flwr ls`` (polled until the run has finished);
``python -m fl_server.launch status CONNECTION`` does the same for a run started by hand (docs/deployment.md,
"Secure deployment by hand"), with an exit status that says whether it completed.

``secure=DIR`` (a folder written by ``meanet certs``) runs the secure path instead of ``--insecure``: the SuperLink
serves TLS (``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``) and, for deployment, authenticates SuperNodes
(``--enable-supernode-auth``); each SuperNode's public key is registered with ``flwr supernode register`` before it
starts with ``--root-certificates`` and ``--auth-supernode-private-key``, and pins the broadcast verify key in its
``--node-config``; the run signs with ``DIR/broadcast-signing.key``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

APP_DIR = Path(__file__).resolve().parents[1]
"""The Flower app's folder (its ``pyproject.toml`` and packages): the source checkout this module runs from."""


def app_dir() -> Path:
    """:data:`APP_DIR`, checked: ``flwr run`` packages the app from a folder with its ``pyproject.toml``.

    Raises
    ------
    ValueError
        When this module runs from an installed copy (``pip install .`` puts the packages in site-packages, without
        the app's ``pyproject.toml``); the message says what to do.
    """
    if not (APP_DIR / "pyproject.toml").is_file():
        raise ValueError(
            f"the Flower app's pyproject.toml is not beside the installed packages ({APP_DIR}): `flwr run` needs the "
            "app's source folder. Run from a clone of MEANet-FL installed with `pip install -e .` (dev/main.sh does), "
            "or `flwr run PATH-TO-CLONE` yourself"
        )
    return APP_DIR


VENV_BIN = Path(sys.executable).parent
FIRST_POLL_SECONDS = 2.0
"""How long :func:`wait_for_run` waits before its second ``flwr ls``. Each ``flwr ls`` is a fresh Python process (about
a second of CPU): polled every 2 s it took a quarter of a core from the run on 2-core machines. The interval grows to
15 s; the end of a followed log stream triggers a poll at once."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Loopback:
    """A SuperLink on 127.0.0.1 started by :func:`loopback_federation` (and the processes to end with it)."""

    connection: str
    """Name of the connection in ``home/config.toml`` (what ``flwr`` commands take)."""
    home: Path
    address: str
    """``127.0.0.1:PORT`` of the SuperLink (Fleet, Control and runtime APIs share it)."""
    procs: list[subprocess.Popen[bytes]]
    """Every process started (SuperLink first); all are ended when the context exits, also ones added later."""
    certs: Path | None = None
    """The ``meanet certs`` folder when the federation is secure (TLS + SuperNode authentication)."""


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


def flower_env(home: Path) -> dict[str, str]:
    """The environment of a Flower process (SuperLink, SuperNode, ``flwr``) with Flower home ``home``."""
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


def wait_healthy(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90, ca_certfile: Path | None = None
) -> None:
    """Wait until the SuperLink ``proc`` answers on ``127.0.0.1:port`` (HTTPS against ``ca_certfile`` when given)."""
    deadline = time.monotonic() + timeout
    scheme = "https" if ca_certfile else "http"
    context = ssl.create_default_context(cafile=str(ca_certfile)) if ca_certfile else None
    while True:
        try:
            urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", timeout=1, context=context)
            return
        except OSError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not start ({e}); its log:\n{log.read_text()[-3000:]}") from e
            time.sleep(0.25)


def start_process(
    cmd: Sequence[str], home: Path, log: Path, cwd: Path | None = None, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` (a SuperLink, a SuperNode) with Flower home ``home`` (and ``extra_env``), in a session of its
    own, output to ``log``; end it with :func:`ended_with`."""
    env = {**flower_env(home), **(extra_env or {})}
    out = log.open("wb")
    return subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=out, stderr=out, start_new_session=True)


@contextmanager
def ended_with(home: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in: each is ended (with all it started) when the block exits, whatever
    happens, and so is any process still running with Flower home ``home``."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            _stop(proc)
        _sweep(home)


def _check_certs(certs: Path, num_supernodes: int) -> None:
    needed = ["ca.pem", "server.pem", "server.key", "broadcast-signing.key", "broadcast-signing.pub"]
    needed += [f"supernode-{i}.{ext}" for i in range(num_supernodes) for ext in ("key", "pub")]
    missing = [n for n in needed if not (certs / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{certs} lacks {', '.join(missing)}: write it with `meanet certs --out {certs} --supernodes "
            f"{max(num_supernodes, 1)}`"
        )


def register_supernode(fed: Loopback, public_key: Path) -> str:
    """``flwr supernode register PUBLIC_KEY``: allow the SuperNode holding its private key in; returns the node id."""
    out = subprocess.run(
        [str(VENV_BIN / "flwr"), "supernode", "register", str(public_key), fed.connection, "--format", "json"],
        env=flower_env(fed.home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    try:
        return str(json.loads(out.stdout)["node-id"])
    except (ValueError, KeyError) as e:
        raise RuntimeError(
            f"flwr supernode register {public_key} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        ) from e


def list_supernodes(fed: Loopback) -> list[dict[str, object]]:
    """``flwr supernode ls``: every SuperNode the SuperLink knows, with its ``node-id`` and ``status``."""
    out = subprocess.run(
        [str(VENV_BIN / "flwr"), "supernode", "ls", fed.connection, "--format", "json"],
        env=flower_env(fed.home), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    try:
        return list(json.loads(out.stdout)["nodes"])
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"flwr supernode ls failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}") from e


def node_config_arg(values: Mapping[str, object]) -> str:
    """A SuperNode's ``--node-config`` string (``key=value`` pairs, TOML values) from a mapping."""
    for key in values:
        if not key or any(c.isspace() or c in "=\"'" for c in key):
            raise ValueError(f"node config key {key!r} must be a plain name (no spaces, quotes or '=')")
    return " ".join(f"{key}={_toml(value)}" for key, value in values.items())


def start_supernode(
    fed: Loopback,
    partition: int,
    num_partitions: int,
    *,
    auth_key: Path | None = None,
    log_name: str | None = None,
    node_config: Mapping[str, object] | None = None,
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a SuperNode for ``partition`` against ``fed``'s SuperLink; it is ended with the federation.

    Secure federations: TLS against ``ca.pem``, authenticated with ``auth_key`` (default ``supernode-PARTITION.key``),
    and the broadcast verify key pinned in the node config. ``node_config``: entries added to the SuperNode's
    ``--node-config`` (its own ``data-dir``, cloud credentials...), overriding the ones set here. Returns the process
    and its log file.
    """
    # its own folder: where it keeps what is its own (a personal state, fl_client.personal), kept across restarts
    values: dict[str, object] = {
        "partition-id": partition,
        "num-partitions": num_partitions,
        "state-dir": str(fed.home / f"supernode-{partition}"),
    }
    cmd = [str(VENV_BIN / "flower-supernode"), "--superlink", fed.address]
    if fed.certs is None:
        cmd += ["--insecure"]
    else:
        key = auth_key or fed.certs / f"supernode-{partition}.key"
        cmd += ["--root-certificates", str(fed.certs / "ca.pem"), "--auth-supernode-private-key", str(key)]
        values["verify-key"] = str(fed.certs / "broadcast-signing.pub")
    values.update(node_config or {})
    cmd += ["--node-config", node_config_arg(values), "--host", "127.0.0.1", "--port", str(free_port())]
    log = fed.home / (log_name or f"supernode-{partition}.log")
    proc = start_process(cmd, fed.home, log)
    fed.procs.append(proc)
    return proc, log


@contextmanager
def loopback_federation(
    *,
    simulation: bool,
    num_supernodes: int = 0,
    home: Path | None = None,
    secure: Path | None = None,
    node_configs: Sequence[Mapping[str, object]] | None = None,
) -> Iterator[Loopback]:
    """A SuperLink (and for deployment ``num_supernodes`` SuperNodes) on 127.0.0.1.

    ``secure``: a ``meanet certs`` folder; TLS on, and for deployment SuperNode authentication on, with SuperNode
    ``i`` registered and authenticated with ``supernode-i.key``/``.pub``. ``node_configs[i]``: entries added to
    SuperNode ``i``'s ``--node-config``.
    """
    if node_configs is not None and len(node_configs) != num_supernodes:
        raise ValueError(f"node_configs has {len(node_configs)} entries for {num_supernodes} SuperNodes; give one each")
    home = home or Path(tempfile.mkdtemp(prefix="meanet-flwr-"))
    home.mkdir(parents=True, exist_ok=True)
    if secure is not None:
        secure = secure.resolve()
        _check_certs(secure, 0 if simulation else num_supernodes)
    port = free_port()
    name = "sim" if simulation else "deploy"
    tls = f'root-certificates = "{secure / "ca.pem"}"\n' if secure else "insecure = true\n"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\n{tls}'
    )
    with ended_with(home) as procs:
        fed = Loopback(name, home, f"127.0.0.1:{port}", procs, secure)
        link_log = home / "superlink.log"
        cmd = [str(VENV_BIN / "flower-superlink"), "--disable-runtime-dependency-installation"]
        if secure is None:
            cmd += ["--insecure"]
        else:
            cmd += ["--ssl-ca-certfile", str(secure / "ca.pem"), "--ssl-certfile", str(secure / "server.pem")]
            cmd += ["--ssl-keyfile", str(secure / "server.key")]
            cmd += [] if simulation else ["--enable-supernode-auth"]  # no SuperNodes connect to a simulation
        cmd += ["--simulation"] if simulation else []
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--database", str(home / "state.db")]
        procs.append(start_process(cmd, home, link_log))
        wait_healthy(port, procs[0], link_log, ca_certfile=secure / "ca.pem" if secure else None)
        for i in range(0 if simulation else num_supernodes):
            if secure is not None:
                register_supernode(fed, secure / f"supernode-{i}.pub")
            start_supernode(fed, i, num_supernodes, node_config=node_configs[i] if node_configs else None)
        yield fed


def _sweep(home: Path) -> None:
    """End any process still running with this federation's own Flower home: a helper the SuperLink or a SuperNode
    started while it was being stopped, or one that left their process tree (seen with ``flower-superexec``)."""
    left = []
    for p in psutil.process_iter(["pid"]):
        with suppress(psutil.Error):
            if p.pid != os.getpid() and p.environ().get("FLWR_HOME") == str(home):
                p.terminate()
                left.append(p)
    _, alive = psutil.wait_procs(left, timeout=10)
    for p in alive:
        with suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def flwr_run(
    connection: str,
    home: Path,
    run_config: dict[str, object],
    *,
    federation_config: str | None = None,
    app: Path | None = None,
    timeout: float = 3600,
    stream_to_stdout: bool = False,
) -> FlowerRun:
    """``flwr run APP CONNECTION``, then wait until the run ends; returns its final status and logs.

    With ``stream_to_stdout`` the run's log (the server's progress lines) is printed as it happens. A run still going
    after ``timeout`` seconds is stopped (``flwr stop``) and reported with its status at that point.
    """
    env = flower_env(home)
    flwr = str(VENV_BIN / "flwr")
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    cmd = [flwr, "run", str(app or app_dir()), connection, "--format", "json"]
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
    try:
        run = wait_for_run(connection, run_id, env, timeout=timeout, streamer=streamer)
    finally:
        if streamer is not None:
            with suppress(subprocess.TimeoutExpired):
                streamer.wait(timeout=10)
            _stop(streamer)
    logs = subprocess.run([flwr, "log", run_id, connection, "--show"], env=env, capture_output=True, text=True).stdout
    return FlowerRun(run_id, str(run["status"]), str(run.get("status-details", "")), logs, home)


def wait_for_run(
    connection: str,
    run_id: str,
    env: Mapping[str, str],
    *,
    timeout: float = 3600,
    streamer: subprocess.Popen[bytes] | None = None,
    stop_on_timeout: bool = True,
) -> dict[str, object]:
    """Poll ``flwr ls`` until run ``run_id`` has finished; returns its ``flwr ls`` record. A run still going after
    ``timeout`` seconds is stopped (``flwr stop``; unless ``stop_on_timeout`` is False), and its record says so in
    ``status-details``.

    Flower's ``flwr run`` (with or without ``--stream``) exits 0 whatever became of the run: its status is what says
    whether it succeeded (``finished:completed``) or not (``finished:failed``, ``finished:stopped``).
    """
    flwr = str(VENV_BIN / "flwr")
    deadline = time.monotonic() + timeout
    interval = FIRST_POLL_SECONDS
    while True:
        run = _run_info(flwr, connection, run_id, dict(env))
        if str(run["status"]).startswith("finished") or time.monotonic() > deadline:
            break
        wake = time.monotonic() + interval
        streaming = streamer is not None and streamer.poll() is None
        while time.monotonic() < wake and not (streaming and _ended(streamer)):
            time.sleep(0.25)
        interval = min(15.0, interval * 1.5)
    if not str(run["status"]).startswith("finished"):
        if not stop_on_timeout:
            return {**run, "status-details": f"still {run['status']} after {timeout:.0f}s"}
        subprocess.run([flwr, "stop", run_id, connection], env=dict(env), capture_output=True, text=True, timeout=60)
        run = {**run, "status-details": f"stopped after {timeout:.0f}s (timeout); was {run['status']}"}
    return run


def newest_run(connection: str, env: Mapping[str, str]) -> str:
    """The id of the run submitted last to ``connection`` (``flwr ls``)."""
    out = subprocess.run(
        [str(VENV_BIN / "flwr"), "ls", connection, "--format", "json"], env=dict(env), capture_output=True, text=True
    )
    try:
        runs = list(json.loads(out.stdout)["runs"])
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"flwr ls {connection} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}") from e
    if not runs:
        raise RuntimeError(f"no run on {connection} yet: submit one with `flwr run . {connection}`")
    return str(max(runs, key=lambda r: str(r.get("pending-at", "")))["run-id"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fl_server.launch status CONNECTION [--run-id ID]``: wait until the run (default: the newest) has
    finished, print its status, and exit 0 only when it completed (1 when it failed or was stopped, 2 when there is
    no such run): the exit status ``flwr run`` does not give."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fl_server.launch", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="wait for a run to finish; exit 0 only when it completed")
    status.add_argument("connection", help="the connection's name in $FLWR_HOME/config.toml")
    status.add_argument("--run-id", default=None, help="the run (default: the newest one on the connection)")
    status.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for it to finish")
    args = parser.parse_args(argv)
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    try:
        run_id = args.run_id or newest_run(args.connection, env)
        run = wait_for_run(args.connection, run_id, env, timeout=args.timeout, stop_on_timeout=False)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    details = run.get("status-details")
    print(f"run {run_id}: {run['status']}" + (f" ({details})" if details else ""))
    return 0 if run["status"] == "finished:completed" else 1


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


def check_quorum(run_config: Mapping[str, object], num_supernodes: int) -> None:
    """Refuse a loopback run whose quorum (``min-edges``, else the app's default) exceeds the SuperNodes it starts:
    no round could ever start."""
    import tomllib  # Python 3.11+, as the CLI's

    default = tomllib.loads((app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]["min-edges"]
    quorum = int(run_config.get("min-edges", default))  # type: ignore[call-overload]
    if quorum > num_supernodes:
        raise ValueError(
            f"min-edges={quorum} is more than the {num_supernodes} edge(s) this run starts: no round could reach "
            f"its quorum; set min-edges to at most {num_supernodes} (e.g. -c min-edges={num_supernodes})"
        )


def run_simulation(
    run_config: dict[str, object],
    num_supernodes: int,
    *,
    timeout: float = 3600,
    home: Path | None = None,
    stream_to_stdout: bool = False,
) -> FlowerRun:
    """The app on Flower's simulation engine (Ray), one CPU per ClientApp."""
    check_quorum(run_config, num_supernodes)
    with loopback_federation(simulation=True, home=home) as fed:
        return flwr_run(
            fed.connection,
            fed.home,
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
    secure: Path | None = None,
    node_configs: Sequence[Mapping[str, object]] | None = None,
) -> FlowerRun:
    """The app on Flower's deployment engine: a SuperLink and ``num_supernodes`` SuperNodes on loopback.

    ``secure``: a ``meanet certs`` folder: TLS, SuperNode authentication, and broadcasts signed with its
    ``broadcast-signing.key`` (unless the run config names another ``signing-key``) and checked by every SuperNode
    against its ``broadcast-signing.pub``. ``node_configs``: one mapping per SuperNode, merged into its
    ``--node-config`` (e.g. its own ``data-dir``, and ``cloud-ca``/``cloud-token-file`` for the offload service).
    """
    check_quorum(run_config, num_supernodes)
    if secure is not None:
        run_config = {"signing-key": str(secure.resolve() / "broadcast-signing.key"), **run_config}
    with loopback_federation(
        simulation=False, num_supernodes=num_supernodes, home=home, secure=secure, node_configs=node_configs
    ) as fed:
        return flwr_run(fed.connection, fed.home, run_config, timeout=timeout, stream_to_stdout=stream_to_stdout)


__all__: Sequence[str] = [
    "FlowerRun",
    "Loopback",
    "check_quorum",
    "ended_with",
    "flower_env",
    "list_supernodes",
    "loopback_federation",
    "main",
    "newest_run",
    "node_config_arg",
    "register_supernode",
    "run_deployment",
    "run_simulation",
    "start_process",
    "start_supernode",
    "wait_for_run",
    "wait_healthy",
]


if __name__ == "__main__":
    sys.exit(main())
