"""`robust-rlhf serve`: run a reward model as an HTTP server (docs/serving.md).

Also runnable on its own: ``python -m robust_rlhf.cli.serve --model DIR``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys

from robust_rlhf.errors import UserError

log = logging.getLogger(__name__)

TOKEN_ENV = "ROBUST_RLHF_TOKEN"
MAX_BODY_MB = 4096.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="reward model folder written by `rm train` (or save_pretrained)")
    p.add_argument("--aggregator", default="mean", metavar="NAME",
                   help="how the K heads become one reward: mean, min, max, uwo, lcb, median, brme_nominal, "
                        "brme_tradeoff (default: %(default)s)")
    p.add_argument("--lam", type=float, default=None,
                   help="uwo: variance penalty (default 0.1); brme_tradeoff: nominal weight in [0, 1] (default 0.5)")
    p.add_argument("--beta", type=float, default=None, help="lcb: std penalty in mean - beta*std (default 1.0)")
    p.add_argument("--normalize", action="store_true",
                   help="standardise each head by its validation mean/std (saved with the model) before aggregating")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only); 0.0.0.0 exposes it -- use a token")
    p.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--token", default=None,
                   help=f"bearer token required on every request (default: ${TOKEN_ENV} if set, else no auth); "
                        f"an empty token is an error from either source; "
                        f"prefer the environment variable, command lines are visible to other users")
    p.add_argument("--allow-client", default=None, metavar="NETS",
                   help="comma-separated client addresses/networks allowed to connect, e.g. 10.0.0.0/8,127.0.0.1 "
                        "(default: any); others get 403. For clients that cannot send a header (OpenRLHF), "
                        "instead of or beside ?token= in the URL")
    p.add_argument("--max-batch-size", type=int, default=64,
                   help="most texts per backbone batch; concurrent requests are gathered up to this (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest an idle server waits for more requests to fill a batch (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=4096,
                   help="most texts waiting to be scored; beyond it requests get 503 + Retry-After (default: %(default)s)")
    p.add_argument("--max-items", type=int, default=1024,
                   help="most texts per request; more gets 413 (default: %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest request body in MiB; more gets 413 (default: %(default)s)")
    p.add_argument("--max-text-chars", type=int, default=100_000,
                   help="longest single prompt/response/query in characters; more gets 413 (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)")


def register(sub) -> None:
    s = sub.add_parser(
        "serve", help="serve a reward model over HTTP (dynamic batching, OpenRLHF/verl compatible)",
        description="Serve a reward model over HTTP: GET /health, POST /score, POST /openrlhf (OpenRLHF "
                    "--reward.remote_url). Concurrent requests are batched dynamically. Binds 127.0.0.1 by "
                    "default; set ROBUST_RLHF_TOKEN (or --token) to require a bearer token. See docs/serving.md.")
    add_arguments(s)
    s.set_defaults(func=cmd_serve)


def config_from_args(args):
    """(ServerConfig, AggregatorConfig) from parsed arguments; `UserError` for invalid values."""
    from robust_rlhf.aggregate import AggregatorConfig
    from robust_rlhf.integrations.protocol import ServerConfig

    aggregator = AggregatorConfig(name=args.aggregator, lam=args.lam, beta=args.beta, normalize=args.normalize)
    if not (math.isfinite(args.max_body_mb) and 0 < args.max_body_mb <= MAX_BODY_MB):
        raise UserError(f"--max-body-mb must be a finite number in (0, {MAX_BODY_MB}], got {args.max_body_mb}")
    if not (math.isfinite(args.max_wait_ms) and 0 <= args.max_wait_ms <= 60_000):
        raise UserError(f"--max-wait-ms must be a finite number in [0, 60000], got {args.max_wait_ms}")
    for flag in ("lam", "beta"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{flag} must be a finite number, got {value}")
    if args.max_body_mb * 1024 * 1024 < 1:
        raise UserError(f"--max-body-mb {args.max_body_mb} is under one byte")
    # An empty token (--token "" or an empty ROBUST_RLHF_TOKEN) is refused by ServerConfig.validate.
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    allow = tuple(a.strip() for a in args.allow_client.split(",")) if args.allow_client is not None else ()
    if args.allow_client is not None and not any(allow):
        raise UserError("--allow-client is empty; give addresses or networks, e.g. 10.0.0.0/8,127.0.0.1")
    config = ServerConfig(host=args.host, port=args.port, token=token, max_batch_size=args.max_batch_size,
                          max_wait_ms=args.max_wait_ms, max_queue_items=args.max_queue,
                          max_items_per_request=args.max_items, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                          max_text_chars=args.max_text_chars, allow_clients=allow)
    config.validate()
    aggregator.validate()
    return config, aggregator


def cmd_serve(args) -> int:
    from robust_rlhf.integrations.server import create_app, load_service, serve

    from robust_rlhf.utils import resolve_device

    config, aggregator = config_from_args(args)
    device = resolve_device(args.device)  # a missing GPU fails here, before the model loads
    service = load_service(args.model, aggregator, batch_size=config.max_batch_size, device=device)
    app = create_app(service, config)
    d = service.describe()

    def ready(url: str) -> None:
        agg = d["aggregator"]
        params = ", ".join(f"{k}={v}" for k, v in agg.items() if k != "name")
        print(f"serving {args.model} (K = {d['num_heads']}, aggregator {agg['name']}"
              f"{' (' + params + ')' if params else ''}, device {d.get('device')}) on {url}"
              f"{'  [bearer token required]' if config.token else ''}"
              f"{'  [clients: ' + ','.join(config.allow_clients) + ']' if config.allow_clients else ''}", flush=True)

    serve(app, config, on_ready=ready)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (``python -m robust_rlhf.cli.serve``), same flags as `serve`."""
    parser = argparse.ArgumentParser(prog="robust-rlhf serve", description="Serve a reward model over HTTP.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return cmd_serve(args)
    except UserError as e:
        print(f"robust-rlhf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
