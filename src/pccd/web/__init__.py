"""``pccd serve``: a local, offline web page and JSON API to generate, screen and view crystals.

Needs the ``web`` extra (``pip install -e ".[web]"``). Jobs are directories under ``--runs`` in
the layout ``pccd generate`` / ``pccd screen`` write (see :mod:`pccd.web.jobs`); the page and
its structure viewer (3Dmol.js, vendored in ``static/``) load nothing from the internet.
"""

from __future__ import annotations

from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
) -> None:
    """Run the page with uvicorn until interrupted (binds loopback unless told otherwise).

    ``precision`` is the network precision of the jobs the page submits (recorded in each
    job's run.json, which the worker then follows, so a job resumes at its own precision).
    """
    import socket

    import uvicorn

    from pccd.web.app import create_app

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # fail before loading anything
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from exc

    app = create_app(
        runs,
        model,
        max_n=max_n,
        threads=threads,
        reference=reference,
        allowed_hosts=None if host in LOOPBACK else ["*"],
        warm=True,
        precision=precision,
    )
    if host not in LOOPBACK:
        print(
            f"pccd serve: warning: listening on {host}; anyone who can reach this port can "
            "start jobs (the page has no login)",
            flush=True,
        )
    shown = f"[{host}]" if ":" in host else host
    print(f"pccd serve: http://{shown}:{port}/  (jobs in {Path(runs).resolve()})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


__all__ = ["serve"]
