"""`python -m core registry ...`: the model registry from the command line (core.cli.main dispatches here).

    list                                        every model, its versions and aliases
    register BUNDLE_DIR --name NAME [--alias ALIAS] [--note TEXT] [--reason TEXT]
    alias NAME ALIAS VERSION [--reason TEXT]    move (or create) an alias
    rollback NAME [--alias champion] [--reason TEXT]
    show NAME                                   versions with their metrics side by side, aliases, history
    verify REF                                  re-hash a stored version (NAME, NAME@ALIAS, NAME:VERSION)

The registry is <workspace>/registry (--workspace DIR; default TRANSFER_STUDIO_WORKSPACE, else ./workspace).
Lines for people come first on stdout; the last stdout line is one JSON object. Exit 0 done, 2 bad input
(an unknown model, alias or version, a bad name, a failed export), 1 a stored version failed verification
or the registry database could not be written.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

from core.cli.args import USER_ERRORS, ArgParser, UsageError, user_error


def _parser() -> ArgParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=argparse.SUPPRESS,
                        help="the workspace folder (default: TRANSFER_STUDIO_WORKSPACE, else ./workspace)")
    common.add_argument("--actor", default=argparse.SUPPRESS, help="who did it (default: the OS user)")
    parser = ArgParser(prog="python -m core registry", parents=[common],
                       description="The model registry: immutable versions of exported bundles, moving aliases "
                                   "with their history, rollback.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="every model with its versions and aliases")
    reg = sub.add_parser("register", parents=[common], help="register an exported bundle as a new version")
    reg.add_argument("bundle_dir")
    reg.add_argument("--name", required=True, help="the model's name (created on first use)")
    reg.add_argument("--alias", help="also point this alias (e.g. champion) at the new version")
    reg.add_argument("--note", default="", help="a note kept with the version")
    reg.add_argument("--reason", default="", help="why the alias moved (with --alias)")
    alias = sub.add_parser("alias", parents=[common], help="move (or create) an alias")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version")
    alias.add_argument("--reason", default="")
    back = sub.add_parser("rollback", parents=[common], help="undo an alias's latest move")
    back.add_argument("name")
    back.add_argument("--alias", default="champion")
    back.add_argument("--reason", default="")
    show = sub.add_parser("show", parents=[common], help="versions side by side, aliases, alias history")
    show.add_argument("name")
    verify = sub.add_parser("verify", parents=[common], help="re-hash a stored version's files")
    verify.add_argument("ref", help="NAME (champion, else latest), NAME@ALIAS or NAME:VERSION")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m core registry COMMAND ...` (argv excludes "registry")."""
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return user_error(exc)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    from core.deploy.registry import Registry, VersionChanged
    from core.workspace import Workspace

    try:
        workspace = getattr(args, "workspace", None) or Workspace.from_env().root
        registry = Registry(os.path.join(os.path.abspath(workspace), "registry"))
        lines, result = _COMMANDS[args.command](registry, args, getattr(args, "actor", ""))
    except VersionChanged as exc:
        return user_error(exc, code=1)
    except sqlite3.Error as exc:
        return user_error(RuntimeError(f"the registry database failed: {exc}"), code=1)
    except USER_ERRORS as exc:
        return user_error(exc)
    for line in lines:
        print(line)
    print(json.dumps({"status": "ok", **result}))
    return 0


def _list(registry, args, actor) -> tuple[list[str], dict[str, Any]]:
    models = registry.list_models()
    lines = [f"{m['name']:24} {m['versions']:3} version(s), latest {m['latest_version']}  "
             + (" ".join(f"{a}->{v}" for a, v in m["aliases"].items()) or "no aliases") for m in models]
    return lines or [f"no models in {registry.root}"], {"root": registry.root, "models": models}


def _register(registry, args, actor):
    version = registry.register(args.bundle_dir, args.name, note=args.note, actor=actor)
    lines = [f"registered {version.ref} from {version.source} -> {version.path}"]
    if version.same_content_as:
        lines.append(f"note: the same files as version {version.same_content_as} (a new version all the same)")
    move = None
    if args.alias:
        move = registry.set_alias(args.name, args.alias, version.version,
                                  reason=args.reason or f"registered {version.ref}", actor=actor)
        lines.append(_move_line(move))
        version = registry.get_version(args.name, version.version)
    return lines, {"version": version.to_dict(), "alias_move": move}


def _alias(registry, args, actor):
    move = registry.set_alias(args.name, args.alias, args.version, reason=args.reason, actor=actor)
    return [_move_line(move)], {"alias_move": move}


def _rollback(registry, args, actor):
    move = registry.rollback(args.name, args.alias, reason=args.reason, actor=actor)
    return [_move_line(move)], {"alias_move": move}


def _show(registry, args, actor):
    shown = registry.show(args.name)
    metrics = shown["metric_names"][:6]
    header = " ".join(f"{m[:16]:>16}" for m in metrics)
    lines = [f"{shown['name']} (created {shown['created']})",
             f"  {'version':>7}  {'created':24} {'run':24} {header}  aliases"]
    for v in shown["versions"]:
        cells = " ".join(f"{_cell(v['metrics'].get(m)):>16}" for m in metrics)
        lines.append(f"  {v['version']:>7}  {v['created']:24} {str(v['run_id'])[:24]:24} {cells}  "
                     f"{','.join(v['aliases'])}")
    lines.append("aliases: " + (", ".join(f"{a['alias']} -> {a['version']}" for a in shown["aliases"]) or "none"))
    lines += ["history:"] + [f"  {h['at']}  {h['alias']}: {h['from_version'] or 'unset'} -> {h['to_version']}"
                             f"  {h['kind']}  {h['actor']}  {h['reason']}" for h in shown["history"]]
    return lines, {"model": shown}


def _verify(registry, args, actor):
    version = registry.resolve(args.ref).verify()
    return [f"{version.ref}: all {len(version.files)} files as registered"], {"version": version.to_dict()}


def _move_line(move: dict[str, Any]) -> str:
    if not move["changed"]:
        return f"{move['name']}@{move['alias']} already names version {move['to_version']}: nothing moved"
    return (f"{move['name']}@{move['alias']}: {move['from_version'] or 'unset'} -> {move['to_version']}"
            f" ({move['kind']})")


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)[:16]


_COMMANDS = {"list": _list, "register": _register, "alias": _alias, "rollback": _rollback, "show": _show,
             "verify": _verify}
