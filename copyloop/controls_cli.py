"""`copyloop model …` and `copyloop mode`: the operator's controls over what is served.

    copyloop model list [--json]           versions, newest first (as GET /v1/models)
    copyloop model export [--version N] P  a model file with its metadata (newest by default)
    copyloop model import P                the file's model becomes the newest version
    copyloop model rollback VERSION        VERSION's model becomes the newest version
    copyloop mode [live|apprentice]        print or set the serving mode

An import or a rollback adds a version: every API process serves it within `model_reload_s`
and the learner continues learning from it (`core.ledger.model_versions`). Both refuse (exit 2)
a model that was trained with other VW arguments or feature definitions than the settings',
or whose VW bytes do not load.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings, load_settings

model_app = typer.Typer(help="Bandit model versions.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)


def _bad(message: str) -> NoReturn:
    """Bad usage or input: the message on stderr, exit 2."""
    err.print(f"error: {message}", highlight=False, markup=False)
    raise typer.Exit(2)


def _fail(message: str) -> NoReturn:
    """Another failure: the message on stderr, exit 1."""
    err.print(f"error: {message}", highlight=False, markup=False)
    raise typer.Exit(1)


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:
        _bad(f"bad settings: {exc}")


@contextmanager
def _ledger(settings: Settings) -> Iterator[sessionmaker[Session]]:
    from core.ledger import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _when(ts: float | None) -> str:
    if ts is None:
        return "now"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@model_app.command("list")
def model_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON, as GET /v1/models.")] = False,
) -> None:
    """Model versions, newest first: created, last learned decision, when served, size."""
    from core.ledger.model_versions import list_versions

    settings = _settings()
    with _ledger(settings) as sessions:
        versions = list_versions(sessions)
    if as_json:
        typer.echo(json.dumps({"versions": [v.to_json() for v in versions]}, indent=2))
        return
    table = Table("version", "created", "source", "last learned decision", "served", "size")
    for v in versions:
        source = v.source if v.origin is None else f"{v.source} of {v.origin}"
        served = f"{_when(v.served_from)} .. {_when(v.served_until)}"
        decided = "-" if v.last_learned_decision is None else v.last_learned_decision
        decided += f" (seq {v.last_seq})"
        size = "missing" if v.size is None else f"{v.size:,} B"
        table.add_row(str(v.version), _when(v.created_at), source, decided, served, size)
    Console(width=160).print(table)


@model_app.command("export")
def model_export(
    path: Annotated[Path, typer.Argument(help="Where to write the model file.")],
    version: Annotated[
        int | None, typer.Option("--version", help="Which version (default: the newest).")
    ] = None,
) -> None:
    """Write a model version to PATH: VW's model behind a header with its VW arguments,
    feature definitions and version."""
    from bandit.model_file import ModelFileError, with_version
    from core.ledger import snapshots

    settings = _settings()
    with _ledger(settings) as sessions:
        try:
            snap = (
                snapshots.load_latest(sessions)
                if version is None
                else snapshots.load_version(sessions, version)
            )
        except OSError as exc:
            _fail(f"the model file of version {version or 'newest'} is unreadable: {exc}")
    if snap is None:
        _bad(
            "no model versions in the ledger"
            if version is None
            else f"no model version {version} in the ledger"
        )
    try:
        data = with_version(snap.model, snap.version)
    except ModelFileError as exc:
        _bad(str(exc))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    typer.echo(f"model version {snap.version} written to {path} ({len(data):,} bytes)")


def _loadable(data: bytes, vw_args: str, where: str) -> None:
    """Exit 2 unless VW loads `data` (a header that matches is not enough)."""
    from bandit import ModelLoadError, Policy

    try:
        Policy(vw_args, model=data).close()
    except (ModelLoadError, ValueError) as exc:
        _bad(f"{where}: the model does not load: {exc}")


@model_app.command("import")
def model_import(
    path: Annotated[Path, typer.Argument(help="A model file written by `model export`.")],
) -> None:
    """Make the model in PATH the newest version: served within seconds, learned on from now."""
    from bandit.model_file import ModelFileError, checked
    from core.ledger.model_versions import add_version
    from core.ledger.snapshots import Snapshot

    settings = _settings()
    if not path.is_file():
        _bad(f"{path}: no such file")
    data = path.read_bytes()
    try:
        header = checked(data, settings.vw_args)
    except ModelFileError as exc:
        _bad(f"{path}: {exc}")
    _loadable(data, settings.vw_args, str(path))
    with _ledger(settings) as sessions:
        version = add_version(
            sessions,
            Snapshot(0, 0, settings.vw_args, data),
            source="import",
            origin=header.version or None,
            snapshot_dir=settings.snapshot_dir,
        )
    typer.echo(f"imported {path} as model version {version}")


@model_app.command("rollback")
def model_rollback(
    version: Annotated[int, typer.Argument(help="The version to serve and learn from.")],
) -> None:
    """Serve VERSION again (as a new newest version) and keep learning from it."""
    from bandit.model_file import ModelFileError, checked
    from core.ledger.model_versions import VersionNotFound, add_version, rollback_source

    settings = _settings()
    with _ledger(settings) as sessions:
        try:
            snap = rollback_source(sessions, version)
        except VersionNotFound as exc:
            _bad(str(exc))
        except OSError as exc:
            _bad(f"the model file of version {version} is unreadable: {exc}")
        try:
            checked(snap.model, settings.vw_args)
        except ModelFileError as exc:
            _bad(f"version {version}: {exc}")
        _loadable(snap.model, settings.vw_args, f"version {version}")
        new = add_version(
            sessions, snap, source="rollback", origin=version, snapshot_dir=settings.snapshot_dir
        )
    typer.echo(f"model version {version} is served again as version {new}")


@model_app.command("restart")
def model_restart(
    yes: Annotated[
        bool, typer.Option("--yes", help="Do it: what the current model learned is not used.")
    ] = False,
) -> None:
    """Start learning afresh when tastes changed (a season, a redesign, a new market): a new,
    untrained version is served within seconds and learns only from the decisions served from
    now on. The versions before it stay (`model rollback` serves one again)."""
    from consumer.errors import ConsumerError
    from consumer.learner import restart

    settings = _settings()
    if not yes:
        _bad(
            "a restart serves an untrained model that explores widely until it has learned "
            "again; run it with --yes"
        )
    with _ledger(settings) as sessions:
        try:
            version = restart(sessions, settings)
        except ConsumerError as exc:  # the ledger is unavailable
            _fail(str(exc))
    typer.echo(
        f"model version {version} is a fresh model: it learns from the decisions served from now on"
    )


class ModeName(StrEnum):
    live = "live"
    apprentice = "apprentice"


def mode(
    name: Annotated[
        ModeName | None, typer.Argument(help="Set this mode (default: print the current one).")
    ] = None,
) -> None:
    """Print or set the serving mode; every API process follows within seconds."""
    from core.ledger import modes

    settings = _settings()
    default = modes.Mode(settings.mode, settings.apprentice_explore)
    with _ledger(settings) as sessions:
        if name is None:
            now = modes.current(sessions, default)
        else:
            now = modes.set_mode(sessions, modes.Mode(name.value, settings.apprentice_explore))
    origin = "from the settings" if now.since is None else f"since {_when(now.since)} UTC"
    share = f", {now.explore:g} of decisions explore" if now.name == "apprentice" else ""
    sys.stdout.write(f"{now.name}\n")
    err.print(f"mode {now.name} ({origin}{share})", highlight=False, markup=False)
