"""Sub-commands of the receiving side: ``serve``, ``studies``, ``send`` and ``echo``."""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import time
from pathlib import Path

from node.audit.events import IndexQueried
from node.audit.messages import operating_system_user
from node.audit.trail import record_from_command
from node.config import DEFAULT_CONFIG, ConfigError, NodeConfig, load_node_config
from node.db import connect
from node.tls import TlsSettings
from routers.check import RoutesFileError


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the node: SCP, assembler and stages")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    serve.set_defaults(func=cmd_serve)

    studies = subparsers.add_parser("studies", help="list received studies (no patient names)")
    studies.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    studies.add_argument("--limit", type=int, default=50, help="newest N studies (default 50)")
    studies.set_defaults(func=cmd_studies)

    tls = argparse.ArgumentParser(add_help=False)
    group = tls.add_argument_group("DICOM TLS")
    group.add_argument("--tls", action="store_true", help="connect with DICOM TLS")
    group.add_argument("--tls-ca", type=Path, help="PEM CA bundle the peer must chain to")
    group.add_argument("--tls-cert", type=Path, help="our PEM certificate, if the peer asks")
    group.add_argument("--tls-key", type=Path, help="the key of --tls-cert")
    group.add_argument(
        "--no-verify-hostname", action="store_true", help="accept a certificate for another name"
    )

    send = subparsers.add_parser(
        "send", help="C-STORE files or folders to a DICOM peer", parents=[tls]
    )
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    send.add_argument("--to", required=True, metavar="AET@HOST:PORT", help="destination AE")
    send.add_argument("--aet", default="AINODE", help="our calling AE title (default AINODE)")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds per response")
    send.add_argument("--quiet", action="store_true", help="no progress bar")
    send.set_defaults(func=cmd_send)

    echo = subparsers.add_parser("echo", help="C-ECHO a DICOM peer", parents=[tls])
    echo.add_argument("peer", metavar="AET@HOST:PORT")
    echo.add_argument("--aet", default="AINODE", help="our calling AE title (default AINODE)")
    echo.add_argument("--timeout", type=float, default=30.0)
    echo.set_defaults(func=cmd_echo)


def _load(path: Path) -> NodeConfig | None:
    try:
        return load_node_config(path)
    except ConfigError as exc:
        print(f"ainode: bad configuration: {exc}", file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    from node.ingest.receivers import ReceiverStartError
    from node.service import Node

    config = _load(args.config)
    if config is None:
        return 2
    node = Node(config)

    def on_signal(signum: int, frame: object) -> None:
        node.request_stop()

    # before start: a stop asked for while it starts (receiver processes take seconds) is
    # a clean stop once it has started
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except (ConfigError, RoutesFileError) as exc:  # a stage's own file cannot be used
        print(f"ainode: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ReceiverStartError as exc:
        print(f"ainode: cannot start the receiver processes: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        listener = config.listener
        print(
            f"ainode: cannot serve on {listener.host}:{listener.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    try:
        while not node.wait(1.0):
            pass
    finally:
        node.stop()
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    conn = connect(config.storage.database_path)
    try:
        rows = conn.execute(
            "SELECT s.study_instance_uid AS uid, s.state, s.version, s.study_date, "
            "s.last_received_at, "
            "(SELECT COUNT(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid)"
            " AS instances, "
            "(SELECT COUNT(*) FROM series r WHERE r.study_instance_uid = s.study_instance_uid)"
            " AS series, "
            "(SELECT group_concat(DISTINCT r.modality) FROM series r "
            " WHERE r.study_instance_uid = s.study_instance_uid) AS modalities, "
            "(SELECT group_concat(DISTINCT r.body_part_examined) FROM series r "
            " WHERE r.study_instance_uid = s.study_instance_uid) AS body_parts "
            "FROM studies s ORDER BY s.last_received_at DESC LIMIT ?",
            (args.limit,),
        ).fetchall()
    finally:
        conn.close()
    record_from_command(
        config.audit,
        config.storage.data_dir,
        config.listener.ae_title,
        IndexQueried(user=operating_system_user(), query=f"studies --limit {args.limit}"),
    )
    header = f"{'STUDY INSTANCE UID':<64}  {'STATE':<9} {'VER':>3} {'SER':>3} {'INST':>5}  "
    header += f"{'MODALITY':<10} {'BODY PART':<12} {'DATE':<8}  LAST RECEIVED"
    print(header)
    for row in rows:
        received = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_received_at"]))
        print(
            f"{row['uid']:<64}  {row['state']:<9} {row['version']:>3} {row['series']:>3} "
            f"{row['instances']:>5}  {(row['modalities'] or '-'):<10} "
            f"{(row['body_parts'] or '-'):<12} {(row['study_date'] or '-'):<8}  {received}"
        )
    return 0


class _ProgressBar:
    """A one-line progress bar on stderr for sends of many files."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        filled = width * done // max(total, 1)
        rate = done / max(now - self._started, 1e-6)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.0f} inst/s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the --tls options ask for; None without --tls. TlsError, ValueError."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    settings = TlsSettings(certificate=args.tls_cert, key=args.tls_key, ca_bundle=args.tls_ca)
    return settings.client_context(verify_hostname=not args.no_verify_hostname)


def cmd_send(args: argparse.Namespace) -> int:
    from node.scu import AssociationFailed, Peer, send

    try:
        peer = Peer.parse(args.to)
        tls = _client_tls(args)
    except ValueError as exc:
        print(f"ainode send: {exc}", file=sys.stderr)
        return 2
    progress = _ProgressBar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        report = send(args.paths, peer, args.aet, args.timeout, progress=progress, tls=tls)
    except AssociationFailed as exc:
        print(f"ainode send: {exc}", file=sys.stderr)
        return 1
    for path in report.skipped:
        print(f"skipped: {path}: a DICOMDIR (media directory), not an object", file=sys.stderr)
    for failure in report.failed:
        print(f"failed: {failure.path}: {failure.reason}", file=sys.stderr)
    skipped = f", skipped {len(report.skipped)}" if report.skipped else ""
    print(f"sent {report.sent}, failed {len(report.failed)}{skipped}")
    return 0 if report.ok else 1


def cmd_echo(args: argparse.Namespace) -> int:
    from node.scu import AssociationFailed, Peer, echo

    try:
        peer = Peer.parse(args.peer)
        status = echo(peer, args.aet, args.timeout, tls=_client_tls(args))
    except ValueError as exc:
        print(f"ainode echo: {exc}", file=sys.stderr)
        return 2
    except AssociationFailed as exc:
        print(f"ainode echo: {exc}", file=sys.stderr)
        return 1
    print(f"C-ECHO {peer}: status 0x{status:04X}")
    return 0 if status == 0 else 1
