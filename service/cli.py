"""`dhrd serve`: flags generated from `Settings` (each also settable as DHRD_<NAME>), then uvicorn."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from . import exit_codes
from .settings import Settings

SKIP = {"models"}
log = logging.getLogger("dhrd.service")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=None, metavar="NAME=EXPORT_DIR",
                        help="serve this export under NAME (repeatable; env DHRD_MODELS)")
    for name, field in Settings.model_fields.items():
        if name in SKIP:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description or ''} (env DHRD_{name.upper()}, default {default!r})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"],
                        help="log level of the service and uvicorn (default: info)")


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
    """Check every export (before the port opens), then run uvicorn until SIGTERM, then drain."""
    import uvicorn

    from .http.app import create_app
    from .http.server import DrainingServer

    settings = settings_from_args(args)
    if not settings.models:
        raise ValueError("no model to serve: pass --model NAME=EXPORT_DIR (or set DHRD_MODELS)")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_exports(settings)
    if settings.front_ends:
        from .supervisor import run

        code = run(settings, args.log_level)
        if code:
            raise SystemExit(code)
        return
    app = create_app(settings, hashes_checked=settings.verify_hashes)
    from .http.connections import uvicorn_options

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                            **uvicorn_options(settings, app),
                            # uvicorn's own cut-off comes after ours, so what we could not finish is answered 503
                            timeout_graceful_shutdown=settings.grace_s + 10)
    server = DrainingServer(config, app)
    server.run()
    if server.engine_dead:
        raise SystemExit(exit_codes.DEVICE_FAILED)


def check_exports(settings: Settings) -> None:
    """Every export's manifest, consistency and (unless disabled, loudly) file hashes, before the port
    opens; the app then loads them without hashing again. Raises ExportError naming the problem."""
    from contract.cpu import cpu_kind
    from contract.export_reader import check_export
    from contract.int8 import check_gate

    for path in settings.models.values():
        manifest, _ = check_export(path, verify_hashes=settings.verify_hashes,
                                   allow_missing_digest=settings.allow_missing_manifest_digest)
        if manifest.quantization is not None:
            verdict = check_gate(path, cpu_kind(), settings.allow_ungated_int8)
            if verdict is None or not verdict.get("passed"):
                log.warning("%s: serving an int8 export whose gate has not passed on this CPU (%s): "
                            "--allow-ungated-int8", path, cpu_kind())
    if not settings.verify_hashes:
        log.warning("--no-verify-hashes: export files are NOT checked against their manifests' sha256")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dhrd", description="The serving command of dhrd (see `dhrd --help`).")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_arguments(sub.add_parser("serve"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """`dhrd serve ...`; returns 2 with a one-line message for a bad export or setting."""
    from contract.export_reader import ExportError
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        serve(args)
    except (ExportError, ValidationError, ValueError, FileNotFoundError) as exc:
        print(f"dhrd serve: error: {exc}", file=sys.stderr)
        return exit_codes.BAD_CONFIG
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
