"""The TLS context of one system, from its ``tls`` options (:class:`~engine.kit.http.options.TlsOptions`).

Certificates are always verified and host names always checked; ``ca_bundle`` replaces the machine's
CAs for that system, ``client_cert`` (and ``client_key``) is presented when the server asks for one.
A file that cannot be read or is not what it should be is a :class:`TlsSetupError` naming the option
and the path (never the key's password).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from engine.kit.http.options import TlsOptions

__all__ = ["TlsSetupError", "ssl_context"]


class TlsSetupError(ValueError):
    """A ``tls`` option names a file that cannot be used."""


def _path(value: str, base_dir: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() or not base_dir else Path(base_dir) / path


def ssl_context(tls: TlsOptions | None, base_dir: str = "") -> ssl.SSLContext | None:
    """The context for a system's https connections; None (the machine's defaults) without ``tls``."""
    if tls is None or (tls.ca_bundle is None and tls.client_cert is None):
        return None
    if tls.ca_bundle is None:
        context = ssl.create_default_context()
    else:
        ca = _readable(_path(tls.ca_bundle, base_dir), "tls.ca_bundle")
        try:
            context = ssl.create_default_context(cafile=ca)  # that file's CAs alone
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"tls.ca_bundle {ca}: not a PEM file of CA certificates ({exc.reason or exc})"
            ) from None
        if not context.get_ca_certs():
            raise TlsSetupError(f"tls.ca_bundle {ca}: no CA certificate in it (a PEM file of CERTIFICATE blocks)")
    if tls.client_cert is not None:
        cert = _readable(_path(tls.client_cert, base_dir), "tls.client_cert")
        key = _readable(_path(tls.client_key, base_dir), "tls.client_key") if tls.client_key else None
        try:
            context.load_cert_chain(cert, key, password=tls.client_key_password)
        except ssl.SSLError as exc:
            raise TlsSetupError(
                f"tls.client_cert {cert}{f' with tls.client_key {key}' if key else ''}: cannot be used "
                f"({exc.reason or exc}): a PEM certificate and its matching private key (and the key's password, "
                "if it is encrypted)"
            ) from None
    return context


def _readable(path: Path, option: str) -> str:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise TlsSetupError(f"{option} {path}: cannot be read ({exc.strerror or exc})") from None
    return str(path)
