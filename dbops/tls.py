"""The client side of a cluster's `tls` settings, for every engine whose driver takes an
ssl.SSLContext (asyncpg, aiokafka, the neo4j driver).

`require` encrypts without checking the certificate (libpq's meaning); `verify-ca` checks the
chain against `ca_file` (or the system's CAs) but not the host name; `verify-full` checks both.
A missing or unreadable file is a TLSConfigError naming the setting, never a traceback.
"""

from __future__ import annotations

import os
import ssl

from dbops.config import TLS

ENCRYPTED = ("require", "verify-ca", "verify-full")


class TLSConfigError(Exception):
    """The TLS settings cannot be turned into an SSL context (a missing CA file, a bad key ...)."""


def check_files(tls: TLS) -> None:
    for key, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        if path and not os.path.exists(path):
            raise TLSConfigError(f"tls.{key} {path} does not exist")


def client_context(tls: TLS) -> ssl.SSLContext:
    """An SSL context for one of the ENCRYPTED modes, with the client certificate if given."""
    check_files(tls)
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
        raise TLSConfigError(f"TLS files cannot be loaded: {first}") from None
    if tls.mode == "require":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = tls.mode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
