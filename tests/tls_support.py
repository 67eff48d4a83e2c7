"""A throw-away PKI for DICOM TLS tests, made with the ``openssl`` command line.

``make_pki`` writes a CA, a server certificate for 127.0.0.1/localhost, two client
certificates the CA signed (one to pin, one that is "another device") and a client whose CA
nobody trusts. Keys are unencrypted PEM except ``server-encrypted.key``, whose password is in
``server-key.password``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"
KEY_PASSWORD = "not-in-node-yaml"


@dataclass(frozen=True)
class Identity:
    certificate: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Identity
    client: Identity
    other_client: Identity
    untrusted_client: Identity
    encrypted_server_key: Path
    key_password_file: Path
    client_subject: str


def _run(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> Identity:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}/O=ainode tests", "-keyout", key, "-out", cert,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return Identity(cert, key)


def _leaf(folder: Path, name: str, subject: str, ca: Identity, extensions: str) -> Identity:
    cert, key, request = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text(extensions, encoding="ascii")
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", request)
    _run(
        "x509", "-req", "-in", request, "-CA", ca.certificate, "-CAkey", ca.key,
        "-CAcreateserial", "-days", "2", "-out", cert, "-extfile", ext,
    )  # fmt: skip
    return Identity(cert, key)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "hospital-ca")
    rogue = _ca(folder, "rogue-ca")
    server_ext = (
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    client_ext = "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    subject = "/CN=ct-scanner-1/O=Test Hospital"
    server = _leaf(folder, "node", "/CN=localhost/O=Test Hospital", ca, server_ext)
    client = _leaf(folder, "ct-scanner-1", subject, ca, client_ext)
    other = _leaf(folder, "ct-scanner-2", "/CN=ct-scanner-2/O=Test Hospital", ca, client_ext)
    untrusted = _leaf(folder, "intruder", "/CN=ct-scanner-1/O=Test Hospital", rogue, client_ext)
    password_file = folder / "server-key.password"
    password_file.write_text(KEY_PASSWORD + "\n", encoding="ascii")
    encrypted = folder / "server-encrypted.key"
    _run(
        "pkey", "-in", server.key, "-out", encrypted, "-aes256",
        "-passout", f"pass:{KEY_PASSWORD}",
    )  # fmt: skip
    return Pki(
        ca=ca.certificate,
        server=server,
        client=client,
        other_client=other,
        untrusted_client=untrusted,
        encrypted_server_key=encrypted,
        key_password_file=password_file,
        client_subject="CN=ct-scanner-1,O=Test Hospital",
    )


def tls_section(pki: Pki) -> dict[str, str]:
    """node.yaml's ``tls:`` for the node's own identity."""
    return {
        "certificate": str(pki.server.certificate),
        "key": str(pki.server.key),
        "ca_bundle": str(pki.ca),
    }


def dcmtk_tls_args(identity: Identity | None, pki: Pki) -> list[str]:
    """DCMTK's options for a TLS association: with our certificate (``+tls``) or none
    (``+tla``), trusting the test CA (``+cf``)."""
    if identity is None:
        return ["+tla", "+cf", str(pki.ca)]
    return ["+tls", str(identity.key), str(identity.certificate), "+cf", str(pki.ca)]
