"""What a vendor's own AI node adds to a study's latency: the round trip through
``runner: dicom-node`` for a 300-slice chest CT.

    python bench/vendor.py [--deidentify]

Two ``ainode serve`` processes on this machine: ours routes the CT to a dicom-node plugin;
the "vendor" is a second node running the ct-lung-nodule reference plugin and sending its SEG
and SRs back. The reference, measured in the same run, is the vendor's own job (created to
finished, from its job table). Printed: our job from creation to SUCCEEDED, the vendor's job,
and the difference (sending the series, the vendor's ingest and stability wait, the results'
way back, checks and relay), with the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import free_port
from ingest_support import stop_node
from test_e2e_orthanc import query, start_node
from test_vendor_node import VENDOR_ROUTES, _our_node, _vendor_manifest, _vendor_node

from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct
from node.scu import Peer, send


def _job_span(database: Path) -> tuple[float, float] | None:
    rows = query(database, "SELECT created_at, finished_at, state FROM jobs ORDER BY id")
    if len(rows) != 1 or rows[0]["state"] != "SUCCEEDED":
        return None
    return rows[0]["created_at"], rows[0]["finished_at"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deidentify", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vendor-") as temp:
        folder = Path(temp)
        _, ct = write_chest_ct(folder / "ct", ChestCTSpec.large(), uid_seed="bench-vendor")
        our_port, vendor_port = free_port(), free_port()
        options = {"deidentify": "true"} if args.deidentify else {}
        _vendor_manifest(folder / "plugins", vendor_port, result_timeout_s=1800, **options)
        node_folder, sections = _our_node(
            folder, our_port, {"kind": "folder", "path": str(folder / "results")}
        )
        vendor = _vendor_node(folder, vendor_port, our_port, VENDOR_ROUTES)
        ours = start_node(node_folder, our_port, sections)
        try:
            started = time.monotonic()
            send(ct, Peer("AINODE", "127.0.0.1", our_port))
            print(f"sent {len(ct)} slices to our node in {time.monotonic() - started:.1f} s")
            deadline = time.monotonic() + 1800
            while (ours_span := _job_span(ours.database)) is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no result within 30 minutes")
                time.sleep(0.5)
            vendor_span = _job_span(vendor.data_dir / "ainode.sqlite3")
            assert vendor_span is not None
        finally:
            stop_node(ours)
            stop_node(vendor)
    ours_s = ours_span[1] - ours_span[0]
    vendor_s = vendor_span[1] - vendor_span[0]
    mode = "pseudonymised" if args.deidentify else "as stored"
    print(f"300-slice chest CT, series sent {mode}, C-STORE on loopback")
    print(f"vendor's own job (reference)  {vendor_s:7.1f} s")
    print(f"our dicom-node job            {ours_s:7.1f} s  ratio {ours_s / vendor_s:5.2f}")
    print(f"added by the round trip       {ours_s - vendor_s:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
