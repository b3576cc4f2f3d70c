"""The deployment guide's secure deployment by hand, run as written on loopback, so the docs cannot drift.

The commands are read from docs/deployment.md (the fenced blocks between the ``deploy-by-hand`` markers) and run in
order: ``meanet certs``, the TLS SuperLink with SuperNode authentication, the connection in ``config.toml``, ``flwr
supernode register``/``ls``, one ``flower-supernode`` per edge device, ``flwr run`` and the run's status check. What
changes: the machines (``cloud.example.org`` and ``0.0.0.0`` become ``127.0.0.1``; each edge device runs in the folder
holding its files), the ports (free ones for 8000 and 9094), the paths (``/etc/meanet/``, ``/path/to/certs/`` become the
``meanet certs`` folder, ``/data/cifar100`` a folder here), edge device 1's command (the guide's device-0 command with
``supernode-1``/``partition-id=1``, as the guide says), and ``flwr run`` gets one more ``--run-config`` with the
smallest run (digits, 1 experience, 1 round). A second ``flwr run`` that fails (an unknown aggregation rule) shows that
``flwr run`` exits 0 and the guide's status check does not. A SuperNode with a key nobody registered, started like the
guide's, is refused as the guide says.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import tomllib

from fl_server.launch import VENV_BIN, app_dir, ended_with, flower_env, free_port, start_process, wait_healthy
from meanet_core.trust.certs import supernode_key_pair
from tests.sim.helpers import left_behind

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
BEGIN, END = "<!-- deploy-by-hand: begin", "<!-- deploy-by-hand: end -->"
TINY = (
    'dataset="digits" model="resnet20_cifar" cloud-model="resnet20_cifar" experiences=1 rounds-per-experience=1 '
    "cloud-epochs=1 local-epochs=1 batch-size=64 limit-train=400 cloud-model-epochs=1 extension-epochs=1"
)
if "main-rounds" in tomllib.loads((app_dir() / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]:
    TINY += " main-rounds=0"  # no rounds where the edges train the main block: the smallest run is one round

BROKEN = TINY + ' aggregation="no-such-rule"'  # the ServerApp refuses this run config: the run fails


def guide_blocks() -> list[tuple[str, str]]:
    """The fenced blocks of the guide's deployment by hand, in order: (language, dedented text)."""
    text = GUIDE.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"docs/deployment.md lost its {BEGIN} ... {END} markers"
    section = text[text.index(BEGIN) : text.index(END)]
    blocks = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", section, flags=re.M | re.S)
    return [(lang, textwrap.dedent(body)) for _, lang, body in blocks]


def commands(script: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped."""
    words = (shlex.split(line, comments=True) for line in script.replace("\\\n", " ").splitlines())
    return [shlex.join(command) for command in words if command]


def test_the_guide_blocks_are_found() -> None:
    langs = [lang for lang, _ in guide_blocks()]
    assert langs == ["bash", "bash", "toml", "bash", "bash", "bash"], langs


@pytest.mark.sim
@pytest.mark.deploy
@pytest.mark.timeout(600)  # 2-3 minutes on 2 loaded cores: two SuperNodes start a ClientApp process per message
def test_the_guide_deployment_by_hand_runs_as_written(tmp_path: Path) -> None:
    cloud, home, runs, data = tmp_path / "cloud", tmp_path / "flwr", tmp_path / "runs", tmp_path / "data"
    for folder in (cloud, home, runs, data):
        folder.mkdir()
    certs = cloud / "certs"  # step 1 writes `certs` in the cloud machine's working folder
    link_port = free_port()
    env = {**flower_env(home), "MEANET_RUNS_DIR": str(runs)}

    def localize(text: str) -> str:
        text = text.replace("cloud.example.org", "127.0.0.1").replace("--host 0.0.0.0", "--host 127.0.0.1")
        text = re.sub(r"\b8000\b", str(link_port), text)
        text = re.sub(r"--port 9094\b", lambda _: f"--port {free_port()}", text)
        for path in ("/etc/meanet/", "/path/to/certs/"):
            text = text.replace(path, f"{certs}/")
        return text.replace("/data/cifar100", str(data))

    def run(command: str, cwd: Path = cloud, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(command)
        out = subprocess.run(
            [str(VENV_BIN / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        return out

    def start(command: str, log: str, cwd: Path) -> subprocess.Popen[bytes]:
        argv = shlex.split(command)
        return start_process([str(VENV_BIN / argv[0]), *argv[1:]], home, home / log, cwd=cwd, extra_env=env)

    rogue_key = tmp_path / "rogue.key"  # a well-formed key pair that nobody registered
    rogue_key.write_bytes(supernode_key_pair()[0])
    rogue_key.chmod(0o600)
    done: list[str] = []
    with ended_with(home) as procs:
        for lang, block in guide_blocks():
            if lang == "toml":  # step 3: the connection
                (home / "config.toml").write_text(localize(block))
                done.append("config.toml")
                continue
            for command in commands(block):
                program = shlex.split(command)[0]
                done.append(" ".join(shlex.split(command)[:3]) if program == "flwr" else program)
                if program == "flower-superlink":
                    procs.append(start(localize(command), "superlink.log", cloud))
                    wait_healthy(link_port, procs[-1], home / "superlink.log", ca_certfile=certs / "ca.pem")
                elif program == "flower-supernode":  # each edge device in the folder holding its files
                    for device in (0, 1):
                        mine = command.replace("supernode-0", f"supernode-{device}")
                        mine = mine.replace("partition-id=0", f"partition-id={device}")
                        procs.append(start(localize(mine), f"supernode-{device}.log", certs))
                    # and a device whose key nobody registered: the guide says it is refused
                    rogue = command.replace("supernode-0.key", str(rogue_key))
                    procs.append(start(localize(rogue), "rogue.log", certs))
                elif program == "flwr" and command.startswith("flwr run"):
                    out = run(f"{localize(command)} --run-config {shlex.quote(TINY)}", cwd=app_dir(), timeout=500)
                    assert out.returncode == 0, f"{command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
                    # a run that fails: Flower's `flwr run` says nothing of it...
                    failed = run(f"{localize(command)} --run-config {shlex.quote(BROKEN)}", cwd=app_dir())
                    assert failed.returncode == 0, failed.stderr[-3000:]
                elif program == "python":  # ... the guide's status check does
                    status = run(localize(command))
                    assert status.returncode == 1 and "finished:failed" in status.stdout, status
                    listed = sorted(json.loads(run("flwr ls edge-cloud --format json").stdout)["runs"],
                                    key=lambda r: str(r["pending-at"]))  # fmt: skip
                    ok = run(f"{localize(command)} --run-id {listed[0]['run-id']}")
                    assert ok.returncode == 0 and "finished:completed" in ok.stdout, (ok, _logs(home))
                else:
                    out = run(localize(command))
                    assert out.returncode == 0, f"{command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        nodes = json.loads(run("flwr supernode ls edge-cloud --format json").stdout)["nodes"]
        refused = _wait_for(home / "rogue.log", "Failed to activate SuperNode", timeout=60)

    assert done == [
        "meanet", "flower-superlink", "config.toml", "flwr supernode register", "flwr supernode register",
        "flwr supernode ls", "flower-supernode", "flwr run .", "python",
    ], done  # fmt: skip
    # the unregistered SuperNode gave up as the guide says; the SuperLink knew only the registered ones, over TLS
    link_log = (home / "superlink.log").read_text()
    assert refused and "Exit Code: 305" in (home / "rogue.log").read_text(), (home / "rogue.log").read_text()
    assert "No SuperNode found with the given public key" in link_log
    assert "Uvicorn running on https://127.0.0.1" in link_log
    assert [n["status"] for n in nodes] == ["online", "online"], nodes
    report = runs / "meanet-federation"
    result = json.loads((report / "report.json").read_text())
    (rnd,) = result["rounds"]
    assert rnd["accepted"] == 2 and rnd["dropped"] == [], rnd  # both edges verified the signed broadcast and trained
    assert rnd["client_evaluation"], rnd  # and verified the signed evaluation broadcast
    assert (report / "report.md").is_file()
    # the server signed with the key from `meanet certs` (whose public key the SuperNodes pinned)
    assert (report / "broadcast-signing.pub").read_bytes() == (certs / "broadcast-signing.pub").read_bytes()
    assert not (report / "broadcast-signing.key").exists()
    assert left_behind(home) == []


def _wait_for(log: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(1)
    return text in log.read_text()


def _logs(home: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(home.glob("*.log")))
