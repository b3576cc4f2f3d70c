"""Every command in the docs, checked: ``python dev/doc_commands.py`` lists them, ``--check`` exits 1 on a stale one.

The commands are the lines of the fenced ``bash`` blocks of README.md and docs/*.md (continuation lines joined,
comments dropped). Each one is either run by a test, or checked here:

- ``meanet ...``: parsed by the command line itself (click), so a renamed or removed option or command fails;
- ``python -m MODULE`` (any python): the module exists; ``python FILE``: the file exists;
- ``dev/*.sh``, ``bash FILE``, ``./FILE``: the file exists;
- ``flwr``, ``flower-superlink``, ``flower-supernode``: installed with the project; the blocks between the
  ``deploy-by-hand`` markers are also run as written by ``tests/sim/test_readme_deploy.py``;
- a shell builtin or a common tool (``cd``, ``export``, ``pip``, ``git``, ``curl``, ...): nothing to check.

A command in none of these classes is reported: add it to a test, or teach this script how to check it.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL_TOOLS = {
    "cd", "export", "source", "echo", "cat", "ls", "mkdir", "rm", "cp", "mv", "kill", "sleep", "pip", "pip3", "git",
    "curl", "tar", "scp", "ssh", "sudo", "docker", "nvidia-smi", "time", "wait", "set", "unset", "test", "[", "true",
    "head", "tail", "grep", "jq", "open", "xdg-open", "uv", "python3", "tee", "env", "nohup", "watch",
}  # fmt: skip
FLOWER = {"flwr", "flower-superlink", "flower-supernode"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, command)`` for each command of the file's bash blocks."""
    in_block, pending, start = False, "", 0
    variables: dict[str, str] = {}  # NAME=value lines of the block, expanded in the commands after them
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line.strip())
        if fence:
            in_block = not in_block and fence.group(1) in ("bash", "sh", "shell", "console")
            pending, variables = "", {}
            continue
        if not in_block:
            continue
        text = line.strip()
        if text.startswith("$ "):
            text = text[2:]
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        full = (pending + text).strip()
        pending = ""
        if not full or full.startswith("#"):
            continue
        for name, value in variables.items():
            full = full.replace("${" + name + "}", value).replace("$" + name, value)
        assignment = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S.*)$", full)
        if assignment and " " not in assignment.group(2).strip("\"'"):
            variables[assignment.group(1)] = assignment.group(2)
            continue
        if assignment:
            words = shlex.split(assignment.group(2), comments=True)
            if len(words) == 1:  # NAME="several words": a variable, not a command
                variables[assignment.group(1)] = words[0]
                continue
        yield start, full


def _words(command: str) -> list[str]:
    command = re.split(r"\s(?:&&|\|\||;|\|)\s", command)[0]  # the first command of a list or pipeline
    command = re.sub(r"\s#.*$", "", command)  # a trailing comment
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value before the program
        words.pop(0)
    return [w for w in words if w not in ("&",)]


def _check_meanet(args: list[str]) -> str | None:
    import click
    import typer

    from meanet_cli.main import app

    args = [a for a in args if not a.startswith(">")]
    group: click.Command = typer.main.get_command(app)
    name = "meanet"
    parent = None
    try:
        while True:
            ctx = group.make_context(name, list(args), parent=parent)
            if not isinstance(group, click.Group):
                return None
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                return None
            sub_name, sub, args = group.resolve_command(ctx, rest)
            if sub is None:
                return f"no command {rest[0]!r}"
            group, name, parent = sub, sub_name or rest[0], ctx
    except click.exceptions.Exit:
        return None
    except click.ClickException as e:
        if isinstance(e, click.BadParameter) and "does not exist" in e.format_message():
            return None  # a path the reader creates first (a run folder, a model file)
        return e.format_message()


def check(command: str) -> str | None:
    """``None`` when the command is fine, else what is wrong with it."""
    words = _words(command)
    if not words:
        return None
    program = words[0]
    if program in ("meanet", ".venv/bin/meanet"):
        return _check_meanet(words[1:])
    if re.search(r"(^|/)python(3(\.\d+)?)?$", program):
        if len(words) >= 3 and words[1] == "-m":
            module = words[2]
            return None if importlib.util.find_spec(module) is not None else f"no module {module!r}"
        if len(words) >= 2 and not words[1].startswith("-"):
            return None if (ROOT / words[1]).exists() else f"no file {words[1]!r}"
        return None
    if program == "bash" and len(words) >= 2:
        return None if (ROOT / words[1]).exists() else f"no file {words[1]!r}"
    if "/" in program:
        return None if (ROOT / program).exists() or Path(program).is_absolute() else f"no file {program!r}"
    if program in FLOWER:
        return None if (Path(sys.executable).parent / program).exists() else f"{program} is not installed"
    if program in SHELL_TOOLS:
        return None
    return f"unknown program {program!r}: add a test that runs it, or teach dev/doc_commands.py to check it"


def main(argv: list[str]) -> int:
    problems = []
    count = 0
    for path in doc_files():
        for line, command in commands(path):
            count += 1
            problem = check(command)
            if "--check" not in argv:
                print(f"{path.relative_to(ROOT)}:{line}: {command}")
            if problem:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {command}\n    -> {problem}")
    if problems:
        print(f"{len(problems)} of {count} documented commands do not hold:", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        return 1
    if "--check" in argv:
        print(f"{count} documented commands checked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
