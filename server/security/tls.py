"""TLS for the gRPC and HTTP ports, from the same files: server certificate and key, and
optionally a client CA (then every client must present a certificate it signed: mutual TLS)."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """The TLS files cannot be used; the message names the file and the problem."""


def server_credentials(
    cert_file: str, key_file: str, client_ca_file: str
) -> grpc.ServerCredentials | None:
    """Credentials for `add_secure_port`, or None when TLS is off (no cert and no key).

    Files are PEM. The certificate and key are checked to match, and the CA to parse, here at
    start-up rather than at the first client's handshake.
    """
    if not cert_file and not key_file:
        if client_ca_file:
            raise TlsConfigError(
                "tls_client_ca needs tls_cert and tls_key (TLS is off without them)"
            )
        return None
    if not (cert_file and key_file):
        raise TlsConfigError("tls_cert and tls_key go together: set both or neither")
    cert = _read(cert_file, "tls_cert")
    key = _read(key_file, "tls_key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        raise TlsConfigError(
            f"tls_cert {cert_file} and tls_key {key_file} are not a matching PEM certificate and "
            f"private key ({error.reason or error})"
        ) from None
    client_ca = None
    if client_ca_file:
        client_ca = _read(client_ca_file, "tls_client_ca")
        try:
            ssl.create_default_context().load_verify_locations(cafile=client_ca_file)
        except ssl.SSLError as error:
            raise TlsConfigError(
                f"tls_client_ca {client_ca_file} is not a PEM CA certificate "
                f"({error.reason or error})"
            ) from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(path: str, setting: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise TlsConfigError(f"{setting} {path}: cannot read it ({error.strerror})") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{setting} {path}: not a PEM file (no -----BEGIN line)")
    return data


def ssl_context(cert_file: str, key_file: str, client_ca_file: str) -> ssl.SSLContext | None:
    """The HTTP port's TLS from the gRPC port's files (`server_credentials` checked them)."""
    if not cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=client_ca_file)
    return context
