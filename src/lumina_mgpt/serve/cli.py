"""`lumina serve`: the OpenAI-compatible API and the web UI on one server (see serve/app.py)."""

from __future__ import annotations

import argparse
import os
import sys

from lumina_mgpt.generation.cli import add_model_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 exposes the server to the network (default: 127.0.0.1)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=16,
        help="images decoded together in one engine call; also the largest n a request may ask for (default: 16)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="images that may wait for a batch; past it requests get 429 (default: 256)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=20.0,
        help="how long a request that finds the model idle waits for others to share its batch (default: 20)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a request may wait and decode before it is answered 504 (default: 300)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=16.0,
        help="largest request body (uploads included) in MiB; larger ones get 413 (default: 16)",
    )
    parser.add_argument(
        "--no-ui", action="store_true", help="serve the API only, without the web UI at /ui (default: the UI is served)"
    )


def run(args: argparse.Namespace) -> int:
    # Before torch starts its thread pool: OpenMP threads that spin while they wait steal the CPU from the
    # event loop and from each other; on a small shared machine that made requests stall for seconds.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from lumina_mgpt.errors import GenerationError
    from lumina_mgpt.generation.checks import check_integer
    from lumina_mgpt.generation.pipeline import Pipeline, load_options
    from lumina_mgpt.model_folder import read_model_info

    check_integer("--port", args.port, 0, "0 picks a free port", 65535)
    max_batch = check_integer("--max-batch", args.max_batch, 1, "images per engine call")
    max_queue = check_integer("--max-queue", args.max_queue, max_batch, "images waiting; at least --max-batch")
    for name, value in (("--timeout", args.timeout), ("--max-body-mb", args.max_body_mb)):
        if not value > 0:
            raise GenerationError(f"{name} must be a number > 0, got {value}")
    if not args.batch_wait_ms >= 0:
        raise GenerationError(f"--batch-wait-ms must be a number >= 0, got {args.batch_wait_ms}")
    device, dtype = load_options(args.device, quant=args.quant)
    info = read_model_info(args.model, args.image_tokenizer)

    from lumina_mgpt.serve.app import HttpServer, bind_socket, create_app
    from lumina_mgpt.serve.scheduler import BatchScheduler

    try:  # before the slow load: a taken port fails at once
        listening = bind_socket(args.host, args.port)
    except OSError as error:
        raise GenerationError(
            f"cannot listen on {args.host}:{args.port}: {error.strerror or error}; "
            f"give a free --port (0 picks one) and an address of this machine"
        ) from None
    print(f"loading model from {info.folder}", file=sys.stderr)
    pipe = Pipeline.from_model_info(info, device=device, dtype=dtype, quant=args.quant)
    scheduler = BatchScheduler(pipe, max_batch=max_batch, max_queue=max_queue, batch_wait_s=args.batch_wait_ms / 1000)
    app = create_app(
        pipe,
        args.model or "embedded",
        scheduler,
        timeout_s=args.timeout,
        max_body_bytes=int(args.max_body_mb * 2**20),
        ui=not args.no_ui,
    )
    server = HttpServer(app, sock=listening)
    ui = "" if args.no_ui else f", web UI at {server.url}/ui"
    print(
        f"serving {args.model or 'embedded'} on {server.url} (OpenAI API at {server.url}/v1{ui})",
        file=sys.stderr,
        flush=True,
    )
    server.run()
    return 0
