"""Every command in README.md and docs/*.md is run by a test or checked by dev/doc_commands.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("doc_commands", ROOT / "dev" / "doc_commands.py")
assert _spec is not None and _spec.loader is not None
doc_commands = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doc_commands)


def test_every_documented_command_holds(capsys) -> None:
    assert doc_commands.main(["--check"]) == 0, capsys.readouterr().err


def test_the_checker_catches_a_stale_command() -> None:
    assert doc_commands.check("meanet bench continual --out runs/x --epochs 3") is None
    assert "no such option" in (doc_commands.check("meanet bench continual --out runs/x --epoch 3") or "").lower()
    assert doc_commands.check("meanet fedrate --num-clients 3") is not None
    assert doc_commands.check("python -m benchmarks.continual.targets runs/x") is None
    assert "no module" in (doc_commands.check("python -m benchmarks.continual.tragets runs/x") or "")
    assert "no file" in (doc_commands.check("bash dev/nothing-here.sh") or "")
    assert "unknown program" in (doc_commands.check("frobnicate --all") or "")


def test_commands_are_read_from_bash_blocks_with_variables_and_continuations(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        'text\n```bash\n# a comment\nC="-c dataset=digits -c experiences=1"\nmeanet federate $C \\\n'
        "    --num-clients 3\n```\n```python\nprint('not a command')\n```\n"
    )
    (found,) = doc_commands.commands(doc)
    assert found[0] == 5
    assert found[1].split() == [
        "meanet",
        "federate",
        "-c",
        "dataset=digits",
        "-c",
        "experiences=1",
        "--num-clients",
        "3",
    ]
