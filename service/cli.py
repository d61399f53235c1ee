"""`dhrd serve`: flags generated from `Settings` (each also settable as DHRD_<NAME>), then uvicorn."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from .settings import Settings

SKIP = {"models"}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=None, metavar="NAME=EXPORT_DIR",
                        help="serve this export under NAME (repeatable; env DHRD_MODELS)")
    for name, field in Settings.model_fields.items():
        if name in SKIP:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or ''} (env DHRD_{name.upper()}, default {field.get_default()!r})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    parser.add_argument("--log-level", default="info")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Explicit flags win over environment variables, which win over defaults."""
    given: dict[str, Any] = {name: getattr(args, name) for name in Settings.model_fields
                             if name not in SKIP and getattr(args, name, None) is not None}
    if args.model:
        given["models"] = ",".join(args.model)
    if "cors_origins" in given:
        given["cors_origins"] = [o for o in str(given["cors_origins"]).split(",") if o]
    return Settings(**given)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .app import create_app
    from .loader import check_files, read_manifest

    settings = settings_from_args(args)
    if not settings.models:
        raise ValueError("no model to serve: pass --model NAME=EXPORT_DIR (or set DHRD_MODELS)")
    for name, path in settings.models.items():  # fail fast, before binding the port
        manifest = read_manifest(path)
        if settings.verify_hashes:
            check_files(path, manifest)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=10)
