"""``tls:`` in node.yaml: DICOM TLS (PS3.15 Annex B) for the listener and every SCU.

One identity serves both ways: the node's certificate and key, and the CA bundle its peers'
certificates must chain to. The profile is BCP 195 (RFC 9325, the one PS3.15 B.9 and B.10
name): TLS 1.2 at least, and for TLS 1.2 only AEAD cipher suites with forward secrecy. A key
password is read from a file, never written in node.yaml.
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator

from node.config_fields import Section

__all__ = [
    "BCP195_CIPHERS",
    "TlsError",
    "TlsSettings",
    "TlsVersion",
    "certificate_fingerprint",
    "parse_subject",
    "pem_fingerprint",
    "subject_of",
]

#: TLS 1.2 suites BCP 195 recommends (RFC 9325 4.2): ECDHE or DHE key exchange, AES-GCM or
#: ChaCha20-Poly1305. TLS 1.3 suites are OpenSSL's, all of which BCP 195 allows.
BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)

#: Short attribute names a pinned subject may be written with, as ``ssl`` names them.
_SUBJECT_NAMES: Mapping[str, str] = {
    "CN": "commonName",
    "O": "organizationName",
    "OU": "organizationalUnitName",
    "C": "countryName",
    "L": "localityName",
    "ST": "stateOrProvinceName",
    "E": "emailAddress",
    "EMAILADDRESS": "emailAddress",
    "DC": "domainComponent",
    "SERIALNUMBER": "serialNumber",
}


class TlsError(ValueError):
    """The TLS files cannot be used; the message names the file and what is wrong."""


class TlsVersion(StrEnum):
    """The oldest protocol version the node speaks."""

    TLS_1_2 = "1.2"
    TLS_1_3 = "1.3"

    @property
    def ssl_version(self) -> ssl.TLSVersion:
        return ssl.TLSVersion.TLSv1_2 if self is TlsVersion.TLS_1_2 else ssl.TLSVersion.TLSv1_3


class TlsSettings(Section):
    """The node's certificate, key and trusted CAs; unset, the node speaks plain DICOM only."""

    certificate: Path | None = Field(None, description="PEM certificate (chain) of this node")
    key: Path | None = Field(None, description="PEM private key of the certificate")
    key_password_file: Path | None = Field(
        None, description="file holding the key's password, if the key is encrypted"
    )
    ca_bundle: Path | None = Field(
        None, description="PEM CA certificates peers' certificates must chain to"
    )
    min_version: TlsVersion = TlsVersion.TLS_1_2
    ciphers: str = Field(BCP195_CIPHERS, description="OpenSSL cipher list for TLS 1.2")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: object) -> object:
        if isinstance(data, Mapping) and "key_password" in data:
            raise ValueError(
                "a key password in node.yaml would leak with the file; put it in a file named "
                "by key_password_file"
            )
        return data

    @model_validator(mode="after")
    def _pairs(self) -> TlsSettings:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("give both tls.certificate and tls.key, or neither")
        if self.key_password_file is not None and self.key is None:
            raise ValueError("tls.key_password_file is set but tls.key is not")
        return self

    @property
    def configured(self) -> bool:
        return self.certificate is not None or self.ca_bundle is not None

    def resolved(self, absolute: Callable[[Path], Path]) -> TlsSettings:
        """A copy with every path made absolute by ``absolute`` (a ``Path -> Path``)."""
        names = ("certificate", "key", "key_password_file", "ca_bundle")
        return self.model_copy(
            update={
                name: absolute(path) for name in names if (path := getattr(self, name)) is not None
            }
        )

    def server_context(self, require_client_certificate: bool) -> ssl.SSLContext:
        """The listener's context: our certificate; a client's verified against ca_bundle,
        required or only checked when offered."""
        if self.certificate is None:
            raise TlsError("listener.tls_port needs tls.certificate and tls.key")
        if require_client_certificate and self.ca_bundle is None:
            raise TlsError(
                "listener.require_client_certificate needs tls.ca_bundle, the CAs that sign "
                "the callers' certificates"
            )
        context = self._context(ssl.PROTOCOL_TLS_SERVER)
        if self.ca_bundle is None:
            context.verify_mode = ssl.CERT_NONE
        elif require_client_certificate:
            context.verify_mode = ssl.CERT_REQUIRED
        else:
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(self, verify_hostname: bool = True) -> ssl.SSLContext:
        """An SCU's context: the peer's certificate verified against ca_bundle (the system's
        CAs without one), ours presented when the node has one."""
        context = self._context(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = verify_hostname
        if self.ca_bundle is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return context

    def _context(self, protocol: int) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = self.min_version.ssl_version
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
        try:
            context.set_ciphers(self.ciphers)
        except ssl.SSLError as exc:
            raise TlsError(f"tls.ciphers {self.ciphers!r} selects no cipher OpenSSL knows") from exc
        if self.ca_bundle is not None:
            try:
                context.load_verify_locations(cafile=str(self.ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(f"tls.ca_bundle {self.ca_bundle}: cannot load: {exc}") from exc
        if self.certificate is not None and self.key is not None:
            password = None
            if self.key_password_file is not None:
                try:
                    password = self.key_password_file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise TlsError(
                        f"tls.key_password_file {self.key_password_file}: {exc.strerror}"
                    ) from exc
            try:
                context.load_cert_chain(str(self.certificate), str(self.key), password)
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(
                    f"tls.certificate {self.certificate} with tls.key {self.key}: cannot load "
                    f"({exc}); check both are PEM, belong together, and the key's password"
                ) from exc
        return context


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as lowercase hex."""
    return hashlib.sha256(der).hexdigest()


def pem_fingerprint(path: Path) -> str:
    """The SHA-256 fingerprint of the (first) certificate in a PEM file; TlsError if none."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise TlsError(f"certificate {path}: cannot read a PEM file ({exc})") from exc
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in text or end not in text:
        raise TlsError(f"certificate {path}: no PEM certificate in the file")
    block = text[text.index(begin) : text.index(end) + len(end)]
    return certificate_fingerprint(ssl.PEM_cert_to_DER_cert(block))


def parse_subject(text: str) -> frozenset[tuple[str, str]]:
    """``CN=scanner-1,O=Hospital`` as (name, value) pairs in ``ssl``'s naming; ValueError."""
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        name, equals, value = part.partition("=")
        key = name.strip().upper()
        if not equals or not value.strip() or key not in _SUBJECT_NAMES:
            raise ValueError(
                f"subject {text!r}: write it as NAME=value pairs separated by commas, NAME one "
                f"of {', '.join(sorted(_SUBJECT_NAMES))} (e.g. CN=ct-scanner-1,O=Hospital)"
            )
        pairs.append((_SUBJECT_NAMES[key], value.strip()))
    return frozenset(pairs)


def subject_of(peer_certificate: Mapping[str, object]) -> frozenset[tuple[str, str]]:
    """The subject of a verified peer certificate (``SSLSocket.getpeercert()``) as pairs."""
    subject = peer_certificate.get("subject", ())
    return frozenset(
        (str(name), str(value))
        for rdn in subject  # type: ignore[union-attr]
        for name, value in rdn
    )
