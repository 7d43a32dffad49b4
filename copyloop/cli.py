"""The `copyloop` command line (CONTRACT.md lists it). Exit codes: 0 ok, 2 bad usage or bad
input (stderr says what and where), 1 other failure.

Settings are built here, once, from the environment, and passed down. Heavy imports (the API,
VW, torch) happen inside the commands that need them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy.exc import OperationalError, ProgrammingError

from copyloop.controls_cli import mode, model_app
from core.settings import Settings, load_settings

app = typer.Typer(
    name="copyloop",
    help="Learn which product copy sells: generate variants, serve with a bandit, learn "
    "from Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
catalog_app = typer.Typer(help="The product catalog.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(catalog_app, name="catalog")
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
app.command("mode")(mode)

err = Console(stderr=True, soft_wrap=True)


class BadInput(Exception):
    """User input that is wrong: exit code 2 with the message."""


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        raise BadInput(f"bad settings: {exc}") from exc


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _parse_window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """--since/--until as the HTTP API reads them (`reports.window`)."""
    from reports.window import BadWindow, parse_window

    try:
        return parse_window(since, until)
    except BadWindow as bad:
        raise BadInput(f"--{bad}") from None


# -- running the parts ------------------------------------------------------------------------
@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="API host.")] = None,
    port: Annotated[int | None, typer.Option(help="API port.")] = None,
    shop_port: Annotated[
        int | None, typer.Option(help="Also serve the demo shop page (the snippet) on this port.")
    ] = None,
) -> None:
    """Everything on embedded defaults: DB, broker unless Kafka is set, API, consumer, scheduler."""
    from copyloop.runner import run_until_signal

    _logging()
    overrides = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    run_until_signal(_settings(**overrides), shop_port=shop_port)


@app.command()
def demo(
    impressions: Annotated[int, typer.Option(min=1, help="Page views to simulate.")] = 20000,
    seed: Annotated[int, typer.Option(help="Seed of the simulated shoppers.")] = 7,
    as_json: Annotated[
        bool, typer.Option("--json", help="Last stdout line: summary JSON.")
    ] = False,
    shop_port: Annotated[
        int | None,
        typer.Option(
            help="After the simulation, keep running and serve the demo shop page (the "
            "snippet against the live API) on this port until Ctrl-C."
        ),
    ] = None,
) -> None:
    """`up` plus a simulated storefront; ends with a bandit-vs-control table and the HTML report."""
    from copyloop.demo import run_demo

    summary = run_demo(
        _settings(), impressions=impressions, seed=seed, quiet=as_json, shop_port=shop_port
    )
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="API host.")] = None,
    port: Annotated[int | None, typer.Option(help="API port.")] = None,
) -> None:
    """The HTTP API alone."""
    from api.server import serve as run_api

    _logging()
    overrides = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    run_api(_settings(**overrides))


@app.command()
def consume() -> None:
    """The Kafka consumer alone (one member of the consumer group)."""
    from consumer.loop import main as run_consumer

    _logging()
    raise typer.Exit(run_consumer(_settings()))


@app.command()
def scheduler() -> None:
    """The periodic jobs alone."""
    from copyloop.scheduler import main as run_scheduler

    _logging()
    run_scheduler(_settings())


@app.command()
def broker(
    port: Annotated[
        int | None, typer.Option(help="Port (default: COPYLOOP_EMBEDDED_BROKER_PORT).")
    ] = None,
) -> None:
    """The embedded Kafka-compatible broker (tansu, in memory) alone."""
    import signal
    import threading

    from core.broker import EmbeddedBroker, ensure_topics

    _logging()
    settings = _settings()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port or settings.embedded_broker_port) as b:
        ensure_topics(
            b.bootstrap,
            [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
            settings.topic_partitions,
        )
        logging.getLogger("copyloop").info("broker listening on %s", b.bootstrap)
        stop.wait()


# -- data -------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to COPYLOOP_DATABASE_URL."""
    from core.migrations import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    typer.echo(f"database at head: {settings.database_url}")


@db_app.command("rollups")
def db_rollups(
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Recompute the report's rollups from the ledger under the current "
            "COPYLOOP_REWARD_WINDOW_S / COPYLOOP_CLOCK_SKEW_S (after changing either, or on a "
            "ledger that closed decisions before the rollups existed).",
        ),
    ] = False,
) -> None:
    """The report's rollups: print their state (status, the window they were built with, how
    many closed decisions they hold); with --rebuild, recompute them first."""
    from sqlalchemy import func, select

    from core.ledger import make_engine, make_sessionmaker
    from core.ledger.tables import ReportRollup
    from reports import rollups

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        if rebuild:
            t = time.perf_counter()
            held = rollups.rebuild(sessions, settings)
            typer.echo(f"rebuilt: {held} closed decisions in {time.perf_counter() - t:.1f}s")
        with sessions() as s:
            st = rollups.state(s)
            rows, held = s.execute(
                select(func.count(), func.coalesce(func.sum(ReportRollup.n), 0))
            ).one()
            why = rollups.usable(st, settings)
    finally:
        engine.dispose()
    status = "missing" if st is None else st.status
    window = (
        ""
        if st is None or st.reward_window_s is None
        else (f" (reward_window_s={st.reward_window_s:g}, clock_skew_s={st.clock_skew_s:g})")
    )
    typer.echo(f"rollups: {status}{window}, {rows} rows, {held} closed decisions")
    typer.echo("the report reads them" if why is None else f"the report scans: {why}")


@catalog_app.command("import")
def catalog_import(
    path: Annotated[Path, typer.Argument(help=".jsonl or .csv file of products.")],
    generate: Annotated[
        bool, typer.Option(help="Also generate rules variants for new or changed products.")
    ] = True,
) -> None:
    """Upsert products (all or nothing: a bad row names its line and field)."""
    from core.catalog import CatalogError, read_catalog, upsert_products
    from core.ledger import make_engine, make_sessionmaker
    from core.migrations import upgrade

    settings = _settings()
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        products = read_catalog(path)
    except CatalogError as exc:
        raise BadInput(str(exc)) from exc
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        result = upsert_products(sessions, products)
        typer.echo(
            f"products: {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged"
        )
        if result.updated_ids:
            from generator.recheck import retire_unsupported

            retired = retire_unsupported(sessions, settings, result.updated_ids)
            typer.echo(f"variants retired: {len(retired)} (their product's data changed)")
            for r in retired:
                err.print(f"retired {r.variant_id} of {r.product_id}: {r.reason}", markup=False)
        if generate:
            from generator.jobs import generate_variants

            report = generate_variants(
                sessions,
                settings,
                product_ids=[p.product_id for p in products],
                backend="rules",
            )
            typer.echo(f"variants: {report}")
    finally:
        engine.dispose()


class Backend(StrEnum):
    rules = "rules"
    hf = "hf"


@app.command()
def generate(
    product_id: Annotated[
        list[str] | None, typer.Option("--product-id", help="Only these products (repeatable).")
    ] = None,
    backend: Annotated[Backend | None, typer.Option(help="Generator backend.")] = None,
    per_product: Annotated[int | None, typer.Option(min=1, help="Candidates per product.")] = None,
) -> None:
    """Create candidate variants (default: every product that has too few)."""
    from rich.progress import Progress

    from core.ledger import make_engine, make_sessionmaker
    from generator import GeneratorError, SettingError, UnknownProductError, UnknownStyleError
    from generator.jobs import generate_variants

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("generating", total=None)

            def tick(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            try:
                report = generate_variants(
                    sessions,
                    settings,
                    product_ids=product_id or None,
                    backend=backend.value if backend else None,
                    per_product=per_product,
                    progress=tick,
                )
            except (UnknownProductError, UnknownStyleError, SettingError) as exc:
                raise BadInput(str(exc)) from exc
            except GeneratorError as exc:
                _fail(str(exc), 1)
        typer.echo(f"variants: {report}")
        if report.stats is not None:  # the hf backend measures its throughput
            s = report.stats
            typer.echo(
                f"throughput: {s.products_per_s:.2f} products/s, {s.tokens_per_s:.1f} tokens/s "
                f"({s.output_tokens} tokens, {s.candidates} candidates in {s.seconds:.1f} s)"
            )
        for pid, reason in report.failed:
            err.print(f"[red]failed[/red] {pid}: {reason}")
        if report.failed:  # the others were generated; say so in the exit code too
            _fail(f"{len(report.failed)} of {report.products} products failed (see above)", 1)
    finally:
        engine.dispose()


# -- the generator's versions and fine-tuning ---------------------------------------------------
generator_app = typer.Typer(help="Generator versions: list, roll back.", no_args_is_help=True)
app.add_typer(generator_app, name="generator")


@app.command()
def finetune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Collect winners and pairs; train nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Last stdout line: result JSON.")] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="KEY=VALUE of the round's configuration (generator.finetune.FinetuneConfig: "
            "sft_steps, learning_rate, lora_r, gate_samples, guardrail_margin …); repeatable.",
        ),
    ] = None,
) -> None:
    """One fine-tuning round of the hf generator on the winning variants, behind the gate."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from core.ledger import make_engine, make_sessionmaker
    from generator import GeneratorError, SettingError
    from generator.finetune import config_from_settings, parse_overrides
    from generator.finetune import main as run_finetune

    settings = _settings()
    try:
        cfg = config_from_settings(settings, dry_run=dry_run, **parse_overrides(overrides or []))
    except ValueError as exc:
        _fail(str(exc), 2)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            tasks: dict[str, object] = {}

            def tick(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=total)
                progress.update(tasks[phase], completed=done, total=total)  # type: ignore[arg-type]

            try:
                result = run_finetune(cfg, sessions, settings, tick)
            except SettingError as exc:
                raise BadInput(str(exc)) from exc
            except GeneratorError as exc:
                _fail(str(exc), 1)
    finally:
        engine.dispose()
    data = {k: v for k, v in result.data.items() if k != "winner_ids"}
    typer.echo(f"{result.status}: {result.reason}")
    if result.version:
        typer.echo(f"version {result.version} (adapter {result.adapter_path})")
    typer.echo("data: " + ", ".join(f"{k}={v}" for k, v in data.items() if k != "digest"))
    if as_json:
        sys.stdout.write(json.dumps({**asdict(result), "data": data}) + "\n")


@generator_app.command("versions")
def generator_versions(
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON.")] = False,
) -> None:
    """Every generator version, oldest first (`*` marks the current one), and what each wrote:
    candidates accepted and rejected by the guardrails, with the commonest reject reasons."""
    from rich.table import Table

    from core.ledger import make_engine, make_sessionmaker
    from generator.jobs import version_counts
    from generator.versions import list_versions, newest_shipped

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        sessions = make_sessionmaker(engine)
        rows = list_versions(sessions)
        current = newest_shipped(sessions, base_model=settings.generator_model)
        counts = version_counts(sessions)
    finally:
        engine.dispose()
    if as_json:
        out = [
            {**asdict(v), "current": current is not None and v.version == current.version}
            | {"candidates": asdict(counts[v.version]) if v.version in counts else None}
            for v in rows
        ]
        sys.stdout.write(json.dumps(out) + "\n")
        return
    table = Table("", "version", "status", "base", "adapter", "parent", "created", "gate")
    for v in rows:
        created = datetime.fromtimestamp(v.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        mark = "*" if current is not None and v.version == current.version else ""
        table.add_row(
            mark,
            v.version,
            v.status,
            v.base_model,
            v.adapter_path or "",
            v.parent or "",
            created,
            v.gate_reason or "",
        )
    written = Table(
        "written by", "active", "retired", "rejected", "pass rate", "top reject reasons"
    )
    for version, c in counts.items():
        top = sorted(c.rejects.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        written.add_row(
            version,
            str(c.statuses.get("active", 0)),
            str(c.statuses.get("retired", 0)),
            str(c.statuses.get("rejected", 0)),
            f"{c.pass_rate:.0%}",
            ", ".join(f"{reason} {n}" for reason, n in top),
        )
    console = Console(width=200)
    console.print(table)
    console.print(written)


@generator_app.command("rollback")
def generator_rollback(
    to: Annotated[
        str | None, typer.Option("--to", help="Ship this version again (default: the previous).")
    ] = None,
) -> None:
    """Mark the current generator version rolled back; the previous (or --to) one is current."""
    from core.ledger import make_engine, make_sessionmaker
    from generator.versions import VersionError, rollback

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        try:
            now = rollback(make_sessionmaker(engine), to=to, base_model=settings.generator_model)
        except VersionError as exc:
            raise BadInput(str(exc)) from exc
    finally:
        engine.dispose()
    typer.echo(f"current generator version: {now.version}")


class ReportFormat(StrEnum):
    html = "html"
    json = "json"
    csv = "csv"


class ReportCi(StrEnum):
    fixed = "fixed"
    sequential = "sequential"


#: --since / --until of the report and the export (`reports.window`).
TimeBound = Annotated[
    str | None, typer.Option(help="ISO-8601 (naive: UTC), epoch seconds or milliseconds.")
]


@app.command()
def report(
    format: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = (
        ReportFormat.json
    ),
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    since: TimeBound = None,
    until: TimeBound = None,
    product_id: Annotated[str | None, typer.Option(help="Only this product.")] = None,
    ope_sample: Annotated[
        int,
        typer.Option(
            min=0, help="Most recent decisions the counterfactual panel scores (0: no panel)."
        ),
    ] = 10_000,
    ci: Annotated[
        ReportCi,
        typer.Option(
            "--ci",
            help="Interval kind: fixed (95%, read once) or sequential (always-valid: safe to "
            "watch continuously).",
        ),
    ] = ReportCi.fixed,
    full_scan: Annotated[
        bool,
        typer.Option(
            "--full-scan", help="Sum every decision instead of reading the rollups (same numbers)."
        ),
    ] = False,
    feature_sample: Annotated[
        int,
        typer.Option(
            min=0,
            help="Newest closed decisions the feature-importance section reads (a model is "
            "retrained per feature group; 0: no section).",
        ),
    ] = 2000,
) -> None:
    """The uplift report."""
    from core.ledger import make_engine, make_sessionmaker
    from reports import to_csv, uplift_report
    from reports.html import to_html

    settings = _settings()
    since_ts, until_ts = _parse_window(since, until)
    engine = make_engine(settings.database_url, read_only=True)  # the consumer writes on
    try:
        data = uplift_report(
            make_sessionmaker(engine),
            settings,
            since_ts,
            until_ts,
            product_id,
            ope_sample=ope_sample,
            ci=ci.value,
            rollups=not full_scan,
            feature_sample=feature_sample,
        )
    finally:
        engine.dispose()
    text = {
        ReportFormat.json: lambda: json.dumps(data, indent=2, allow_nan=False),
        ReportFormat.csv: lambda: to_csv(data),
        ReportFormat.html: lambda: to_html(data),
    }[format]()
    if out is None:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"report written to {out}")


class ExportFormat(StrEnum):
    dsjson = "dsjson"


@app.command()
def export(
    format: Annotated[ExportFormat, typer.Option("--format", help="Output format.")] = (
        ExportFormat.dsjson
    ),
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    since: TimeBound = None,
    until: TimeBound = None,
    product_id: Annotated[str | None, typer.Option(help="Only this product.")] = None,
) -> None:
    """Closed decisions as VW DSJson (`--cb_explore_adf --dsjson`), one per line."""
    from core.ledger import make_engine, make_sessionmaker
    from reports.export import export as write_export

    settings = _settings()
    since_ts, until_ts = _parse_window(since, until)
    engine = make_engine(settings.database_url, read_only=True)  # the consumer writes on
    try:
        sessions = make_sessionmaker(engine)
        if out is None:
            write_export(sessions, sys.stdout, format.value, since_ts, until_ts, product_id)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w") as fh:
                n = write_export(sessions, fh, format.value, since_ts, until_ts, product_id)
            err.print(f"{n} decisions written to {out}", highlight=False, markup=False)
    finally:
        engine.dispose()


class Role(StrEnum):
    serve = "serve"
    events = "events"
    storefront = "storefront"
    analyst = "analyst"
    admin = "admin"


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="What the key may do.")],
    label: Annotated[str, typer.Option(help="A note stored with the key.")] = "",
) -> None:
    """Print a new API key alone on the last stdout line (only its hash is stored)."""
    from core.keys import create_key
    from core.ledger import make_engine, make_sessionmaker
    from core.migrations import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        key = create_key(make_sessionmaker(engine), role.value, label)
    finally:
        engine.dispose()
    typer.echo(key)


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """Keys by id, role, created, last used (never the key itself; last use lags ≤ 1 minute)."""
    from core.keys import list_keys
    from core.ledger import make_engine, make_sessionmaker

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        keys = list_keys(make_sessionmaker(engine))
    finally:
        engine.dispose()
    if as_json:
        for k in keys:
            typer.echo(json.dumps(asdict(k)))
        return
    typer.echo(f"{'id':<14}{'role':<12}{'created':<27}{'last used':<27}{'status':<9}label")
    for k in keys:
        status = "revoked" if k.revoked else "active"
        typer.echo(
            f"{k.key_id:<14}{k.role:<12}{_when(k.created_at):<27}{_when(k.last_used_at):<27}"
            f"{status:<9}{k.label}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `copyloop keys list` shows.")],
) -> None:
    """Revoke a key: every API process refuses it within 10 s (their caches' lifetime)."""
    from core.keys import KeyIdError, revoke_key_id
    from core.ledger import make_engine, make_sessionmaker

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        info = revoke_key_id(make_sessionmaker(engine), key_id)
    except KeyIdError as exc:
        raise BadInput(str(exc)) from exc
    finally:
        engine.dispose()
    typer.echo(f"revoked {info.key_id} ({info.role}); API processes refuse it within 10 s")


def main() -> None:
    """Entry point: maps bad input to exit 2 and other failures to exit 1."""
    try:
        # Outside standalone mode click *returns* the code of a `typer.Exit` (it raises only
        # from nested calls): a command's own exit code must not be dropped.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except BadInput as exc:
        err.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(2)
    except typer.Abort:
        sys.exit(1)
    except (OperationalError, ProgrammingError) as exc:
        text = str(exc.orig)
        if "no such table" in text or ("relation" in text and "does not exist" in text):
            err.print(
                f"error: the ledger has no tables yet ({text.splitlines()[0]}): run "
                "`copyloop db upgrade` (COPYLOOP_DATABASE_URL names the database)",
                highlight=False,
                markup=False,
            )
        else:
            err.print(f"error: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except Exception as exc:
        show = getattr(exc, "show", None)
        if show is not None and getattr(exc, "exit_code", None) == 2:  # a usage error
            show()
            sys.exit(2)
        err.print(f"error: {type(exc).__name__}: {exc}", highlight=False, markup=False)
        sys.exit(1)
