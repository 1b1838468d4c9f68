"""`bsegn serve --model BUNDLE`: a web page and a JSON API for a trained model, on 127.0.0.1 by default.

    GET  /         the page (static HTML/JS/CSS shipped in bsegn.app/static; nothing fetched from the internet)
    GET  /model    the model card (with its gate: kind and threshold) and classes
    POST /predict  multipart form, the image in field `image` (optional `top_k`, `explain`): the JSON of
                   `predict --json` for that image (Prediction.to_json: the classes, the gate's `unseen` decision
                   and `p_unseen`, above 0.5 exactly when it calls the image unseen, in every mode)
    POST /classes  JSON {"name": NAME, "attributes": "v1,v2,..." or [v1, ...]} or {"csv": "name,a1,...\\n..."}:
                   unseen classes added to the served model, in memory, read and named as add-class reads
                   them (bsegn.app.class_inputs); at most 50 per call (413 beyond)
    POST /save     JSON {"name": FOLDER}: the served model written to --save-dir/FOLDER (a new folder)

FastAPI + uvicorn (the `serve` extra) rather than Gradio: the API is exactly ours, the page is one small
static file set with no analytics and no CDN, and the install stays small. Every route answers JSON
errors ({"error": message}) with a 4xx status for what the client got wrong; 503 while the model loads.
`bsegn serve` loads and verifies the model (bsegn.app.serve_engine.Engine) before it binds its port;
uploads are held in memory (never spooled to disk) and decoded by the same open_rgb as predict, under a
byte and a pixel limit; no route reads or writes a client-given path.
"""
from __future__ import annotations

import argparse
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="a web page and JSON API for a model (needs the serve extra: "
                                                "pip install -e \".[serve]\")")
    serve.add_argument("--model", default=None, help="run folder or bundle (default: as predict: $BSEGN_MODEL, else "
                                                     "the newest bundle under ./runs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                           "only; any other address is reachable by others)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--save-dir", default=None, help="folder where the page may save the model with its added "
                                                        "classes (new sub-folders only); without it saving is off")
    serve.add_argument("--mode", choices=("gzsl", "zsl", "seen"), default="gzsl")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--open-world", choices=("auto", "on", "off"), default="auto",
                       help="answer 'unknown' by the model's open-world rule: auto (default) where its run chose it on "
                            "validation, on: any rule (refused when none), off: never (README)")
    serve.add_argument("--max-bytes", type=int, default=20_000_000, help="largest upload accepted (bytes)")
    serve.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted (width x height)")
    serve.add_argument("--max-batch", type=int, default=16, help="most images in one batched forward")
    serve.add_argument("--threads", type=int, default=None,
                       help="torch threads for the forward (default: half the CPU cores, at least 1; the other "
                            "cores decode uploads at the same time: more would oversubscribe the CPU)")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from importlib.util import find_spec

    missing = [name for name, modules in (("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                          ("python-multipart", ["python_multipart", "multipart"]))
               if not any(find_spec(module) for module in modules)]
    if missing:
        print(f"bsegn serve: needs the serve extra ({', '.join(missing)} missing): pip install -e \".[serve]\"",
              file=sys.stderr)
        return 2
    from pathlib import Path

    from bsegn.app.model_lookup import default_model
    from bsegn.app.processes import no_compile_cache
    from bsegn.app.serve_engine import Engine, Limits
    from bsegn.core.errors import ConfigError
    from bsegn.core.logs import get_logger

    if min(args.max_bytes, args.max_pixels, args.max_batch, args.threads or 1) < 1 or not 0 <= args.port <= 65535:
        raise ConfigError("--max-bytes, --max-pixels, --max-batch and --threads must be >= 1, --port in 0..65535")
    no_compile_cache()  # before torchvision is imported
    path = Path(args.model) if args.model else default_model()
    import os

    import torch

    cores = os.cpu_count() or 2
    torch.set_num_threads(args.threads or max(1, cores // 2))  # measured: 2 threads on 2 busy cores ran 4x slower
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_batch=args.max_batch,
                    decoders=max(2, cores - torch.get_num_threads()))
    engine = Engine(path, mode=args.mode, device=args.device, save_dir=args.save_dir, limits=limits,
                    open_world=args.open_world)
    engine.load()  # before listening: a missing, damaged or feature-only bundle is one line and exit 2
    if args.host not in LOOPBACK:
        get_logger(__name__).warning(
            "serve: listening on %s: anyone who can reach this machine can use the page and its routes "
            "(no authentication); use the default 127.0.0.1 unless you mean it", args.host)
    try:
        sock = bind(args.host, args.port)
    except ConfigError:
        engine.stop()
        raise
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"bsegn serve: http://{host}:{sock.getsockname()[1]}/ (model {path}; Ctrl+C stops)", flush=True)
    app = create_app(engine, allowed_hosts=list(LOOPBACK) + ["[::1]"] if args.host in LOOPBACK else None)
    server = make_server(app, limits)
    server.run(sockets=[sock])
    engine.stop()
    return 0


def bind(host: str, port: int):
    """A listening socket, or ConfigError saying why not (port taken, address not ours)."""
    import socket

    from bsegn.core.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port "
                          "or --host") from None
    sock.set_inheritable(True)
    return sock


def make_server(app, limits):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2,
                            limit_concurrency=limits.max_pending + 16)
    return uvicorn.Server(config)


class BackgroundServer:
    """uvicorn in a thread on a free loopback port (tests, bench, screenshots): `with BackgroundServer(app) as url:`."""

    def __init__(self, app, limits=None, host: str = "127.0.0.1"):
        from bsegn.app.serve_engine import Limits

        self.sock = bind(host, 0)
        self.server = make_server(app, limits or Limits())
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread ended before it started")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def create_app(engine, *, allowed_hosts: list[str] | None = None):
    """The FastAPI app around an Engine (started or not: routes answer 503 until it is ready)."""
    from bsegn.app.serve_routes import build_app

    return build_app(engine, allowed_hosts=allowed_hosts)
