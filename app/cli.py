"""`xnli-serve` command line: serve, build-demo-store."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.settings import DEFAULT_CATALOGUE, KeySourceError, Settings

if TYPE_CHECKING:
    from app.engine.engine import Engine

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="Serve multilingual NLI (XLM-R) variants.")
log = logging.getLogger("xnli_serve")


def build_engine(settings: Settings) -> Engine:
    """The engine the settings describe (not loaded); raises CatalogueError for a catalogue that cannot be served."""
    from app.engine.engine import Engine
    from app.engine.models.catalogue import check_request_limit, load_catalogue

    variant_catalogue = load_catalogue(settings.catalogue, settings.variants)
    check_request_limit(variant_catalogue, settings.max_pairs_per_request)
    return Engine(
        variant_catalogue,
        tokenization_workers=settings.tokenization_workers,
        torch_threads=settings.torch_threads,
        request_timeout_s=settings.request_timeout_s,
        allow_faults=settings.enable_fault_injection,
        export_cache_dir=settings.export_cache_dir,
        max_tokenizing_pairs=settings.max_tokenizing_pairs,
        max_tokenizing_chars=settings.max_tokenizing_chars,
        traffic_seed=settings.traffic_seed,
        shadow_max_queue_pairs=settings.shadow_max_queue_pairs,
        shadow_timeout_s=settings.shadow_timeout_s,
        shadow_max_client_backlog_s=settings.shadow_busy_backlog_ms / 1000.0,
        worker_pipeline={"auto": None, "on": True, "off": False}[settings.worker_pipeline],
    )


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (XNLI_SERVE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (XNLI_SERVE_PORT).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (XNLI_SERVE_GRPC_PORT).")] = None,
    catalogue: Annotated[Path | None, typer.Option(help="Variant catalogue TOML (XNLI_SERVE_CATALOGUE).")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error (XNLI_SERVE_LOG_LEVEL).")] = None,
) -> None:
    """Check every variant's checkpoint, then serve; models load and warm up while /health/ready says 503."""
    given = {"host": host, "port": port, "grpc_port": grpc_port, "catalogue": catalogue, "log_level": log_level}
    overrides: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
    settings = Settings(**overrides)
    if settings.max_tokenizing_pairs < settings.max_pairs_per_request:
        print(
            f"xnli-serve: cannot start: XNLI_SERVE_MAX_TOKENIZING_PAIRS={settings.max_tokenizing_pairs} is below "
            f"XNLI_SERVE_MAX_PAIRS_PER_REQUEST={settings.max_pairs_per_request}: the largest request could never "
            "be tokenized",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    if settings.max_tokenizing_chars < settings.max_body_bytes:
        print(
            f"xnli-serve: cannot start: XNLI_SERVE_MAX_TOKENIZING_CHARS={settings.max_tokenizing_chars} is below "
            f"XNLI_SERVE_MAX_BODY_BYTES={settings.max_body_bytes}: the largest request could never be tokenized",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    try:
        keys = settings.load_api_keys()
    except (OSError, KeySourceError) as error:
        print(f"xnli-serve: cannot start: API keys: {error}", file=sys.stderr)
        raise typer.Exit(2) from None

    from app.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)

    from app.api.server import run_server
    from app.engine.models.catalogue import CatalogueError
    from app.engine.models.store import CheckpointError

    try:
        engine = build_engine(settings)
        engine.preflight()
    except (CatalogueError, CheckpointError) as error:
        print(f"xnli-serve: cannot start: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    if (warning := settings.exposure_warning(keys)) is not None:
        log.warning(warning)
    if settings.frontend_processes > 1:
        from app.multiprocess.supervisor import run_supervisor

        engine.close()  # checked only: the engine process builds and loads its own
        raise typer.Exit(
            run_supervisor(settings, {f"XNLI_SERVE_{key.upper()}": str(value) for key, value in overrides.items()})
        )
    run_server(settings, engine, api_keys=keys)


@cli.command("build-demo-store")
def build_demo_store_command(
    out: Annotated[Path, typer.Option(help="Model store folder to write into.")] = Path("model_store"),
    size: Annotated[
        str,
        typer.Option(
            help="tiny (tests, quick start), base (XLM-R base encoder, 12 x 768) or large (XLM-R large, 24 x 1024)."
        ),
    ] = "tiny",
    force: Annotated[bool, typer.Option(help="Rebuild checkpoints that already exist.")] = False,
    variant: Annotated[list[str] | None, typer.Option(help="Build only these demo variants (repeatable).")] = None,
    tokenizer_corpus: Annotated[
        Path | None,
        typer.Option(
            help="Train the tokenizer on this XNLI-format folder (e.g. ../shared/data/xnli) for realistic lengths "
            "(default: the shipped sample pairs)."
        ),
    ] = None,
    tokenizer_from: Annotated[
        Path | None, typer.Option(help="Reuse the tokenizer of this existing checkpoint folder instead of training.")
    ] = None,
    vocab_size: Annotated[
        int | None, typer.Option(help="Tokenizer pieces (default 16000 with a corpus, 4000 for the sample pairs).")
    ] = None,
) -> None:
    """Write UNTRAINED demo XLM-R checkpoints (random predictions) and a catalogue if the folder has none."""
    from app.logs import configure_logging

    configure_logging("info", "text")
    from app.demo.build_store import SHAPES, build_demo_store

    if size not in SHAPES:
        print(f"xnli-serve: --size must be one of {sorted(SHAPES)}", file=sys.stderr)
        raise typer.Exit(2)
    try:
        made = build_demo_store(
            out,
            size=size,  # type: ignore[arg-type]
            force=force,
            variants=variant,
            tokenizer_corpus=tokenizer_corpus,
            tokenizer_from=tokenizer_from,
            vocab_size=vocab_size,
        )
    except (ValueError, OSError) as error:  # XnliFormatError is a ValueError
        print(f"xnli-serve: build-demo-store: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"built {len(made)} demo checkpoint(s) in {out}" if made else f"demo checkpoints already present in {out}")


@cli.command()
def evaluate(
    data: Annotated[
        Path,
        typer.Option(
            help="XNLI data: a folder of per-language TSVs (e.g. ../shared/data/xnli), the XNLI 1.0 file "
            "xnli.dev.tsv / xnli.test.tsv, or Hugging Face xnli JSON lines (a .jsonl file or a folder of them)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports/evaluation"),
    languages: Annotated[str | None, typer.Option(help="Comma-separated languages (default: all found).")] = None,
    variants: Annotated[str | None, typer.Option(help="Comma-separated variants (default: all enabled).")] = None,
    url: Annotated[str | None, typer.Option(help="Evaluate a running service over HTTP instead of in-process.")] = None,
    catalogue: Annotated[Path, typer.Option(help="Catalogue for the in-process path.")] = DEFAULT_CATALOGUE,
    baseline: Annotated[str | None, typer.Option(help="Baseline variant (default: intermediate_task none).")] = None,
    batch_size: Annotated[int, typer.Option(help="Pairs per request.")] = 32,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 4,
    limit_per_language: Annotated[int | None, typer.Option(help="Use only the first N pairs of each language.")] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="With --url: sent as Authorization: Bearer <key> to a service that requires one.",
            envvar="XNLI_SERVE_API_KEY",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Accuracy per language and latency of each variant on XNLI, with paired tests against the baseline."""
    from app.evaluation.collect import EvaluationError
    from app.evaluation.run import evaluate as run_evaluation
    from app.logs import configure_logging
    from app.xnli import XnliFormatError

    configure_logging("warning", "text")
    split = [name.strip() for name in variants.split(",")] if variants else None
    chosen_languages = [name.strip() for name in languages.split(",")] if languages else None
    try:
        run_evaluation(
            data, out, chosen_languages, split, url, catalogue, baseline, batch_size, concurrency, limit_per_language,
            api_key=api_key,
        )  # fmt: skip
    except (EvaluationError, XnliFormatError) as error:
        print(f"xnli-serve evaluate: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    print(f"report: {out / 'report.md'}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
