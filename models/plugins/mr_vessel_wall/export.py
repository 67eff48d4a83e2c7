"""Script the vessel-wall model to TorchScript and print the file's sha256 for plugin.yaml.

    python models/plugins/mr_vessel_wall/export.py              # writes vessel_wall.pt here
    python models/plugins/mr_vessel_wall/export.py --out DIR    # elsewhere (reproducibility test)

The model has no trained weights: its parameters (ray count, radii, smoothing, edge rules) are
fixed in ``wall_model.VesselWallRayModel``, so exporting is deterministic and the same torch
version writes byte-identical files (TorchScript names the archive after the file, so keep
the file name ``vessel_wall.pt``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL_FILE = "vessel_wall.pt"


def export(directory: Path) -> Path:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from wall_model import VesselWallRayModel

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILE
    scripted = torch.jit.script(VesselWallRayModel().eval())
    scripted.save(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write vessel_wall.pt to")
    args = parser.parse_args(argv)
    path = export(args.out)
    print(f"{path}  sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
