"""``pccd serve``: a local, offline web page and JSON API to generate, screen and view crystals.

Needs the ``web`` extra (``pip install -e ".[web]"``). Jobs are directories under ``--runs`` in
the layout ``pccd generate`` / ``pccd screen`` write (see :mod:`pccd.web.jobs`); the page and
its structure viewer (3Dmol.js, vendored in ``static/``) load nothing from the internet. Any
address but loopback needs a token (:mod:`pccd.web.auth`).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pccd.errors import InputError

#: what a ``--token`` may be made of: it travels in a URL and a cookie unescaped
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{8,200}")


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    runs: str | Path = "runs",
    model: str | None = None,
    *,
    max_n: int = 1000,
    threads: int = 0,
    reference: str | None = None,
    log_level: str = "info",
    precision: str = "float32",
    token: str | None = None,
    max_queue: int = 50,
) -> None:
    """Run the page with uvicorn until interrupted (binds loopback unless told otherwise).

    ``precision`` is the network precision of the jobs the page submits (recorded in each
    job's run.json, which the worker then follows, so a job resumes at its own precision).
    Any address but loopback needs a token: ``token``, or one made up and printed here in the
    page's URL (loopback needs one only when given). ``max_queue``: tasks waiting or running
    before a submission is answered 429.
    """
    import uvicorn  # optional extra: web

    from pccd.web.app import create_app  # FastAPI (optional extra: web)
    from pccd.web.auth import is_loopback, new_token  # Starlette (optional extra: web)

    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise InputError("--token must be 8 to 200 characters of A-Z, a-z, 0-9, '.', '_', '~', '-'")
    loopback = is_loopback(host)
    if token is None and not loopback:
        token = new_token()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # fail before loading anything
        # as uvicorn binds: a port left in TIME_WAIT by a server just stopped is free to use;
        # only a process listening on it makes the probe fail
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from exc

    app = create_app(
        runs,
        model,
        max_n=max_n,
        threads=threads,
        reference=reference,
        allowed_hosts=None if loopback else ["*"],
        warm=True,
        precision=precision,
        token=token,
        max_queue=max_queue,
    )
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    if not loopback:
        print(
            f"pccd serve: listening on {host}: anyone who can reach this port and has the token "
            "can start jobs; the traffic is not encrypted",
            flush=True,
        )
    print(f"pccd serve: {url}  (jobs in {Path(runs).resolve()})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


__all__ = ["serve"]
