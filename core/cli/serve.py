"""`python -m core serve MODEL[@ALIAS|:VERSION]`: the prediction server (FastAPI on uvicorn, one worker) of a
registry model (core.deploy.server). It binds 127.0.0.1 unless told otherwise, and refuses any other address
unless TRANSFER_STUDIO_API_TOKEN is set (then /predict, /feedback and /metrics need `Authorization: Bearer`).

Once the model is loaded, one JSON line on stdout says where it is served ({"status": "serving", "url", ...});
the server's own log goes to stderr. Exit 0 after a clean shutdown (Ctrl-C, SIGTERM), 2 on bad input (an unknown
model or alias, a bad bundle, a refused address).
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
from typing import Sequence

from core.cli.args import ArgParser, UsageError, guarded
from core.errors import StudioError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    from core.data.limits import IngestLimits

    parser = ArgParser(prog="python -m core serve",
                       description="Serve a registry model over HTTP: POST /predict, POST /feedback, GET /health, "
                       "GET /metrics; the docs at /docs.")
    parser.add_argument("ref", metavar="MODEL[@ALIAS|:VERSION]",
                        help="a registry model: MODEL (its champion, else its latest version), MODEL@ALIAS (followed "
                        "when the alias moves) or MODEL:VERSION (pinned)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; any other needs TRANSFER_STUDIO_API_TOKEN set)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workspace", help="the workspace holding registry/ and serving/ (default: "
                        "TRANSFER_STUDIO_WORKSPACE, else ./workspace)")
    parser.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body, in MiB (default 20)")
    parser.add_argument("--max-images", type=int, default=32, help="images per request (default 32)")
    parser.add_argument("--max-pixels", type=int, default=IngestLimits().max_image_pixels,
                        help="width*height of one image (default: the dataset ingest's limit)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=32, help="micro-batching: images per model call")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="micro-batching: longest wait for more")
    parser.add_argument("--log-images", action="store_true", help="keep each input image in the prediction log")
    parser.add_argument("--image-log-cap-mb", type=float, default=2.0, help="largest image kept (default 2 MiB)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores)")
    parser.add_argument("--ort-spinning", choices=("on", "off"), default="on",
                        help="ONNX Runtime's idle threads spin (on) or sleep (off)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="how often a followed alias is checked")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr (uvicorn)")
    parser.add_argument("--challenger", metavar="REF", help="a second version beside the served one, e.g. "
                        "MODEL@challenger: measured on the same traffic before it is promoted")
    parser.add_argument("--mode", choices=("shadow", "ab"), default="shadow",
                        help="shadow: the challenger predicts every request, logged only (default); ab: it answers "
                        "--ab-share of them")
    parser.add_argument("--ab-share", type=float, default=0.1, help="A/B: share of requests the challenger answers")
    return guarded(lambda: _serve(parser.parse_args(argv)))


def _serve(args) -> int:
    from core.deploy.server import TOKEN_ENV, ServeConfig

    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None:
        raise StudioError(f"refusing to serve on {args.host}: anyone who can reach it could use the model and "
                         f"write to the prediction log. Set {TOKEN_ENV} to a secret (clients then send "
                         "`Authorization: Bearer <token>`), or bind 127.0.0.1")
    for name, value in (("--port", args.port), ("--max-images", args.max_images), ("--top-k", args.top_k),
                        ("--max-batch", args.max_batch), ("--max-pixels", args.max_pixels)):
        if value < (0 if name == "--port" else 1) or (name == "--port" and value > 65535):
            raise UsageError(f"{name} {value} is out of range")
    if not 0 <= args.ab_share <= 1:
        raise UsageError(f"--ab-share {args.ab_share} must be between 0 and 1")
    if not args.max_body_mb > 0 or not args.poll_seconds > 0 or args.max_wait_ms < 0:
        raise UsageError("--max-body-mb and --poll-seconds must be above 0, --max-wait-ms 0 or more")
    config = ServeConfig(ref=args.ref, host=args.host, port=args.port,
                         max_body_bytes=int(args.max_body_mb * 1024**2), max_images=args.max_images,
                         max_pixels=args.max_pixels, top_k=args.top_k, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, log_images=args.log_images,
                         image_log_cap_bytes=int(args.image_log_cap_mb * 1024**2), token=token,
                         poll_seconds=args.poll_seconds, threads=args.threads,
                         spinning=args.ort_spinning == "on", challenger=args.challenger,
                         challenger_mode=args.mode, ab_share=args.ab_share)
    return run_server(config, args.workspace, access_log=args.access_log)


def run_server(config, workspace: str | None = None, access_log: bool = False) -> int:
    """Load the model (errors before anything binds), then run uvicorn until it is stopped."""
    import logging

    import uvicorn

    from core.deploy.predlog import PredictionLog
    from core.deploy.registry import Registry
    from core.deploy.server import create_app
    from core.workspace import Workspace

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")  # hot switches
    root = os.path.abspath(workspace) if workspace else Workspace.from_env().root
    registry = Registry(os.path.join(root, "registry"))
    log = PredictionLog.for_workspace(root, image_cap_bytes=config.image_log_cap_bytes)
    app = create_app(config, registry, config.ref, log)
    served = app.state.holder.current
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"serving {served.name} version {served.version} ({config.ref}) on http://{host}:{config.port} "
          f"(docs: /docs; log: {log.path})", file=sys.stderr, flush=True)
    print(json.dumps({"status": "serving", "url": f"http://{host}:{config.port}", "model": served.name,
                      "version": served.version, "ref": config.ref, "pid": os.getpid(), "log": log.path,
                      "auth": config.token is not None}), flush=True)
    try:
        uvicorn.run(app, host=config.host, port=config.port, workers=1, access_log=access_log, log_level="info",
                    timeout_graceful_shutdown=10)
    finally:
        app.state.close()
        log.close()
    return 0
