"""`python -m bnserve.server.clients.healthcheck`: the container HEALTHCHECK, asking grpc.health.v1
(no TCP poke).

Exits 0 when the server answers SERVING and 1 otherwise (NOT_SERVING, unknown service, no answer
within the timeout), printing one line either way. With no flags it asks 127.0.0.1 on the port
the server itself reads (BNSERVE_PORT, default 50051), so the image's HEALTHCHECK needs none.
With TLS on, pass the CA that signed the server certificate (--tls-ca; plus a client certificate
when the server requires one) by overriding the HEALTHCHECK command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.server.clients.connect import ConnectError, open_channel
from bnserve.server.settings import ENV_PREFIX

DEFAULT_PORT = 50051


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    port = environ.get(ENV_PREFIX + "PORT", "").strip() or str(DEFAULT_PORT)
    parser = argparse.ArgumentParser(
        prog="python -m bnserve.server.clients.healthcheck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--target", default=f"127.0.0.1:{port}", help=f"HOST:PORT (default: 127.0.0.1:{port})"
    )
    parser.add_argument("--service", default="", help="health service name ('': the server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds for the call")
    parser.add_argument("--tls-ca", default="", help="PEM CA of the server certificate (TLS)")
    parser.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    return parser


def check_health(args: argparse.Namespace) -> tuple[bool, str]:
    """(healthy, what the server answered) for one grpc.health.v1 Check call."""
    try:
        channel = open_channel(
            args.target, ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key
        )
    except ConnectError as error:
        return False, str(error)
    with channel:
        request = health_pb2.HealthCheckRequest(service=args.service)
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
        except grpc.RpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser(os.environ if environ is None else environ).parse_args(argv)
    healthy, answer = check_health(args)
    service = repr(args.service) if args.service else "the server"
    print(f"{'healthy' if healthy else 'unhealthy'}: {args.target} ({service}): {answer}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
