#!/usr/bin/env python
"""Write docs/configuration.md, the configuration reference, from the config dataclasses, so it cannot drift.

Every frozen dataclass of ``meanet_core/config.py`` gets a table: its keys in kebab-case (the run-config keys of
``pyproject.toml``'s ``[tool.flwr.app.config]`` and ``-c key=value``, or ``meanet train``'s options), the type and
default read from the dataclass, the app's default from ``pyproject.toml`` where it differs, and a description: the
field's inline ``# ...`` comment in the dataclass source (continuation comment lines included), else the key's comment
in ``pyproject.toml``, else the command-line option's help.

    python dev/config_reference.py            # rewrite docs/configuration.md
    python dev/config_reference.py --check    # exit 1 if docs/configuration.md is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import io
import sys
import tokenize
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "meanet_core" / "config.py"
PYPROJECT = ROOT / "pyproject.toml"
OUTPUT = ROOT / "docs" / "configuration.md"
MODULE = "meanet_core.config"

# Where each dataclass's keys are set: (how to name a key, the heading's sentence, the CLI command whose option help
# describes a field that has no comment of its own).
USES: dict[str, tuple[str, str, str | None]] = {
    "FederationConfig": (
        "{key}",
        "The federation's run config (`meanet federate -c KEY=VALUE`, `flwr run . CONNECTION --run-config "
        "'KEY=VALUE ...'`, or `pyproject.toml`'s `[tool.flwr.app.config]`). The *app default* column is the value "
        "in `pyproject.toml`, which every run starts from; the *default* column is the dataclass's, used only where "
        "a key is missing.",
        None,
    ),
    "TrainConfig": (
        "--{key}",
        "`meanet train`'s options (`meanet train --KEY VALUE`); `meanet train --help` lists them with the options "
        "that are not part of the config (`--out`, `--resume`, `--threads`).",
        "train",
    ),
}


def _comments(text: str) -> dict[int, str]:
    """Line number -> the text of the ``#`` comment on that line."""
    found: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def field_comments(source: str, class_name: str) -> dict[str, str]:
    """Field name -> its inline comment and the comment-only lines that continue it, joined."""
    lines = source.splitlines()
    comments = _comments(source)
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    found: dict[str, str] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        parts = [comments[node.end_lineno]] if node.end_lineno in comments else []
        line = (node.end_lineno or node.lineno) + 1
        while line <= len(lines) and lines[line - 1].strip().startswith("#"):
            parts.append(comments[line])
            line += 1
        if parts:
            found[node.target.id] = " ".join(parts)
    return found


def pyproject_app_config(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``[tool.flwr.app.config]``: key -> value, and key -> its comment (continuation lines included)."""
    values = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    comments: dict[str, str] = {}
    section, key = False, None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section, key = line == "[tool.flwr.app.config]", None
            continue
        if not section:
            continue
        if line.startswith("#"):
            if key is not None:
                comments[key] += " " + line.lstrip("#").strip()
            continue
        if "=" not in line:
            key = None
            continue
        key = line.split("=", 1)[0].strip()
        # the comment after the value: the first '#' outside a string
        rest, quoted = line.split("=", 1)[1], None
        for i, ch in enumerate(rest):
            if ch in "\"'" and quoted in (None, ch):
                quoted = None if quoted else ch
            elif ch == "#" and quoted is None:
                comments[key] = rest[i + 1 :].strip()
                break
        else:
            comments[key] = ""
    return values, {k: v for k, v in comments.items() if v}


def option_help(command: str) -> dict[str, str]:
    """Option name (snake_case) -> its help, for ``meanet COMMAND`` (the console script named in pyproject.toml)."""
    import typer.main

    target = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]["meanet"]
    module, attr = target.split(":")
    click_group = typer.main.get_command(getattr(importlib.import_module(module), attr))
    click_command = click_group.commands[command]  # type: ignore[attr-defined]
    return {p.name: (getattr(p, "help", None) or "") for p in click_command.params if p.name}


def show(value: Any) -> str:
    """A value as one writes it in TOML / on the command line."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    """The whole of docs/configuration.md."""
    sys.path.insert(0, str(ROOT))
    config = importlib.import_module(MODULE)
    source = SOURCE.read_text(encoding="utf-8")
    app_values, app_comments = pyproject_app_config(PYPROJECT.read_text(encoding="utf-8"))
    classes = [
        node.name
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and dataclasses.is_dataclass(getattr(config, node.name, None))
    ]
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by dev/config_reference.py from meanet_core/config.py and pyproject.toml: do not edit by",
        "     hand; run `python dev/config_reference.py` (tests/unit/test_docs.py fails when this file is stale). -->",
        "",
        "Every setting is read once, at the boundary, into a frozen dataclass of `meanet_core/config.py` that",
        "rejects unknown keys, wrong types and out-of-range values with a message naming the key. How the settings",
        "are used: [deployment.md](deployment.md) (the federation), [train.md](train.md) (`meanet train`),",
        "[design.md](design.md) (what each stage does).",
        "",
        "Sections: " + ", ".join(f"[`{n}`](#{n.lower()})" for n in classes) + ".",
    ]
    for name in classes:
        cls = getattr(config, name)
        key_format, sentence, command = USES.get(name, ("{key}", "", None))
        comments = field_comments(source, name)
        helps = option_help(command) if command else {}
        is_app = name == "FederationConfig"
        hints = {
            n.target.id: ast.unparse(n.annotation)
            for n in next(c for c in ast.parse(source).body if isinstance(c, ast.ClassDef) and c.name == name).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
        }
        out += ["", f"## `{name}`", ""]
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ").replace("``", "`")
        out += [doc, "", sentence, ""] if sentence else [doc, ""]
        if is_app:
            out += ["| key | type | default | app default | description |", "|---|---|---|---|---|"]
        else:
            out += [f"| {'option' if command else 'key'} | type | default | description |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            default = f.default if f.default is not dataclasses.MISSING else None
            description = comments.get(f.name) or (app_comments.get(key, "") if is_app else "") or helps.get(f.name, "")
            option = key_format.format(key=key)
            if command and f.name not in helps:  # a config field with no option of its own
                option = key
                description = description or f"not an option of `meanet {command}`: `{name}({f.name}=...)` in Python"
            row = [f"`{option}`", cell(f"`{hints.get(f.name, '')}`"), cell(f"`{show(default)}`")]
            if is_app:
                app = app_values.get(key, default)
                row.append(cell(f"`{show(app)}`") if key in app_values and app != default else "")
            row.append(cell(description))
            out.append("| " + " | ".join(row) + " |")
        if is_app:
            unknown = sorted(set(app_values) - {f.name.replace("_", "-") for f in dataclasses.fields(cls)})
            if unknown:
                raise SystemExit(f"pyproject.toml's [tool.flwr.app.config] has keys {name} does not know: {unknown}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is stale")
    args = parser.parse_args(argv)
    text = render()
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if current != text:
            print(
                f"{OUTPUT.relative_to(ROOT)} is stale: it no longer matches meanet_core/config.py and pyproject.toml;"
                " run `python dev/config_reference.py` to rewrite it",
                file=sys.stderr,
            )
            return 1
        print(f"{OUTPUT.relative_to(ROOT)} is up to date")
        return 0
    if current != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    else:
        print(f"{OUTPUT.relative_to(ROOT)} already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
