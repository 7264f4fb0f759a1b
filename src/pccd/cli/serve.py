"""``pccd serve``: the local web page and JSON API."""

from __future__ import annotations

import argparse

from pccd.cli import options as opt
from pccd.diffusion import DEFAULT_PRECISION
from pccd.web import serve  # light: the web extra (FastAPI, uvicorn) loads when serve() runs

SERVE_PRECISION_HELP = (
    "how the network computes for the jobs the page submits (default float32, for every "
    "model: a job records it and resumes at it); bfloat16: autocast, faster on CPUs with "
    "AMX/AVX512-BF16"
)


def _cmd_serve(args: argparse.Namespace) -> int:
    """The local web page and JSON API (generate, screen, browse and view crystals)."""
    serve(
        host=args.host,
        port=args.port,
        runs=args.runs,
        model=args.model,
        max_n=args.max_n,
        threads=args.threads,
        reference=args.reference,
        precision=args.precision,
        token=args.token,
        max_queue=args.max_queue,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``pccd`` parser."""
    p_srv = sub.add_parser(
        "serve",
        help="local web page + JSON API to generate and view crystals",
        parents=[opt.precision_parent(SERVE_PRECISION_HELP, DEFAULT_PRECISION)],
    )
    p_srv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p_srv.add_argument("--port", type=opt.int_type(1, 65535), default=8000)
    p_srv.add_argument("--runs", default="runs", help="job directories (default ./runs)")
    p_srv.add_argument("--model", help="model directory or shipped model name")
    p_srv.add_argument("--reference", help="known materials (mp_reference.csv.gz) for novelty")
    p_srv.add_argument("--max-n", type=opt.POSITIVE_INT, default=1000, help="most crystals per job")
    p_srv.add_argument("--threads", type=int, default=0, help="torch threads of the worker")
    p_srv.add_argument(
        "--token",
        help="token every request must carry (default: none on loopback; made up and printed "
        "in the page's URL on any other address)",
    )
    p_srv.add_argument(
        "--max-queue",
        type=opt.POSITIVE_INT,
        default=50,
        help="tasks queued or running before a submission is answered 429 (default 50)",
    )
    p_srv.set_defaults(func=_cmd_serve)
