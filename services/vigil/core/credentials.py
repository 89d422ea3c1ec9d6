"""How a Vigil process proves who it is to NATS, and how it checks the server: the NATS way.

``--creds FILE`` / ``VIGIL_CREDS`` names a user's nkey seed file (what ``vigil secure init``
writes) or a JWT ``.creds`` file; ``--tls-ca`` / ``VIGIL_TLS_CA`` the CA that signed the server's
certificate (``VIGIL_TLS_CERT`` / ``VIGIL_TLS_KEY`` add a client certificate where the server
asks for one). Nothing configured means what it always meant: a plain, anonymous connection.

A ``tls://`` URL or a CA means TLS or no connection at all, never a silent fallback to plaintext.
No secret leaves this module: seeds are read here and handed to nats-py, and URLs are shown only
through ``redact``.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

_SEED_LINE = re.compile(r"^\s*(SU[A-Z2-7]{50,})\s*$", re.MULTILINE)
_USERINFO = re.compile(r"(?<=://)[^@/]*@")


class CredentialsError(ValueError):
    """The credentials or TLS files cannot be used; the message names the file, never a secret."""


def inbox_prefix(public_key: str) -> str:
    """The reply prefix of the client holding ``public_key``: derived from the key, so neither
    side configures it, and the server lets only that user subscribe to it."""
    return f"_INBOX.{public_key[:16]}"


def redact(url: str) -> str:
    """``nats://user:secret@host`` -> ``nats://***@host``."""
    return _USERINFO.sub("***@", url)


@dataclass(frozen=True)
class Credentials:
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def resolve(
        cls,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> Credentials:
        """Flags beat the environment (``VIGIL_CREDS``, ``VIGIL_TLS_CA``, ``VIGIL_TLS_CERT``,
        ``VIGIL_TLS_KEY``)."""

        def pick(value: str | None, env: str) -> Path | None:
            chosen = value or os.environ.get(env)
            return Path(chosen) if chosen else None

        return cls(
            pick(creds, "VIGIL_CREDS"),
            pick(tls_ca, "VIGIL_TLS_CA"),
            pick(tls_cert, "VIGIL_TLS_CERT"),
            pick(tls_key, "VIGIL_TLS_KEY"),
        )

    def user(self) -> str | None:
        """The public nkey these credentials authenticate as (None: anonymous or JWT)."""
        seed = self._seed()
        return None if seed is None else _public_key(seed)

    def options(self, urls: list[str]) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        out: dict[str, Any] = {}
        if self.creds is not None:
            text = _read(self.creds, "credentials")
            if "BEGIN NATS USER JWT" in text:
                out["user_credentials"] = str(self.creds)
            else:
                seed = self._seed(text)
                assert seed is not None
                out["nkeys_seed_str"] = seed
                out["inbox_prefix"] = inbox_prefix(_public_key(seed))
        if self.tls_ca is not None or any(u.startswith("tls://") for u in urls):
            out["tls"] = self.tls_context()
        return out

    def tls_context(self) -> ssl.SSLContext:
        """Verify the server against our CA (the system's without one), hostname included."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.tls_ca is not None:
            _read(self.tls_ca, "TLS CA")
            try:
                ctx.load_verify_locations(cafile=str(self.tls_ca))
            except ssl.SSLError as exc:
                raise CredentialsError(
                    f"{self.tls_ca}: not a CA certificate ({exc.reason})"
                ) from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CredentialsError(
                "a client certificate needs both VIGIL_TLS_CERT and VIGIL_TLS_KEY"
            )
        if self.tls_cert is not None and self.tls_key is not None:
            try:
                ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            except (OSError, ssl.SSLError) as exc:
                raise CredentialsError(
                    f"{self.tls_cert}: cannot load the client certificate ({exc})"
                ) from None
        return ctx

    def _seed(self, text: str | None = None) -> str | None:
        if self.creds is None:
            return None
        text = text if text is not None else _read(self.creds, "credentials")
        if "BEGIN NATS USER JWT" in text:
            return None
        match = _SEED_LINE.search(text)
        if match is None:
            raise CredentialsError(f"{self.creds}: no user nkey seed (a line starting SU) in it")
        return match.group(1)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise CredentialsError(f"cannot read the {what} file {path}: {reason}") from None


def _public_key(seed: str) -> str:
    try:
        pair = nkeys.from_seed(bytearray(seed.encode()))
    except Exception:
        raise CredentialsError("the credentials file holds an invalid nkey seed") from None
    public: bytes = pair.public_key
    pair.wipe()
    return public.decode()
