"""``ainode vendors``: what was sent to which vendor, what came back, what is still awaited.

Read from the database, so it works whether or not the node runs. Results that arrived for
no waiting job (after the job timed out, or never asked for) are listed as kept, not lost.
UIDs and AE titles only, never patient names or IDs.
"""

from __future__ import annotations

import argparse
import time
from contextlib import closing
from pathlib import Path

from node.config import DEFAULT_CONFIG, load_node_config
from node.db import connect


def register(subparsers: argparse._SubParsersAction) -> None:
    vendors = subparsers.add_parser("vendors", help="series sent to vendors and their results")
    vendors.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    vendors.set_defaults(func=cmd_vendors)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def cmd_vendors(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    with closing(connect(config.storage.database_path)) as conn:
        requests = conn.execute(
            "SELECT r.*, j.state, j.error, (SELECT COUNT(*) FROM vendor_inbox i "
            "WHERE i.job_id = r.job_id AND i.state = 'RELAYED') AS relayed "
            "FROM vendor_requests r JOIN jobs j ON j.id = r.job_id ORDER BY r.sent_at DESC"
        ).fetchall()
        unclaimed = conn.execute(
            "SELECT i.*, (SELECT r.job_id FROM vendor_requests r WHERE r.results_from = "
            "i.calling_ae AND r.study_instance_uid = i.study_instance_uid ORDER BY r.sent_at "
            "DESC LIMIT 1) AS for_job FROM vendor_inbox i WHERE i.state != 'RELAYED' "
            "ORDER BY i.received_at"
        ).fetchall()
    if not requests and not unclaimed:
        print("nothing sent to vendors")
    for r in requests:
        deid = " (pseudonymised)" if r["deidentified"] else ""
        print(
            f"job {r['job_id']:>5}  {r['state']:<15}  {r['vendor']}  results from "
            f"{r['results_from']}  study {r['study_instance_uid']}{deid}"
        )
        print(
            f"        sent {r['instances_sent']} instance(s) {_when(r['sent_at'])}  "
            f"due {_when(r['expires_at'])}  relayed {r['relayed']}"
        )
        if r["error"]:
            print(f"        error: {r['error']}")
    for i in unclaimed:
        job = f"job {i['for_job']}" if i["for_job"] is not None else "no job"
        print(
            f"kept   {i['state']:<8}  {i['sop_instance_uid']} from {i['calling_ae']}  study "
            f"{i['study_instance_uid']}  received {_when(i['received_at'])}  ({job})"
        )
    return 0
