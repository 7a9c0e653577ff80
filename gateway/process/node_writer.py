"""The node's writer process on SQLite (storage.writer_process), as the supervisor starts
it: `python -m gateway.process.node_writer --parent PID --fd N --database PATH`.

It dies with the supervisor (as a worker does), logs to stderr in the service's format
(the supervisor passes its lines on, whole, into the one log stream) and serves the
listening socket it inherited until SIGUSR1 (it ignores SIGTERM: storage.writer_process).
"""

from __future__ import annotations

import argparse
import logging

from gateway.process.logs import FORMAT, ZonedFormatter
from gateway.process.parent import become_worker
from storage.writer_process import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="postern-writer")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    become_worker(args.parent)
    handler = logging.StreamHandler()
    handler.setFormatter(ZonedFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, args.log_level.upper()))
    serve(args.fd, args.database)


if __name__ == "__main__":
    main()
