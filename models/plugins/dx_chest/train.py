"""Train dx-chest's network on generated chest phantoms and export ``model.onnx``.

    python -m models.plugins.dx_chest.train            # train, evaluate, write the plugin files
    python -m models.plugins.dx_chest.train --output /tmp/dx   # somewhere else (tests)

Everything is seeded (phantom seeds, weight initialisation, batch order) and runs on the CPU
in a few minutes. Seeds from ``HELD_OUT_SEED_START`` up to ``HELD_OUT_SEED_END`` are kept for
evaluation and the tests, and training seeds never enter that range, so accuracy is always
measured on unseen patients.
The run writes ``model.onnx``, ``metrics.json`` (held-out accuracy) and, when writing into
the plugin folder, the model's sha256 into ``plugin.yaml``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from models.phantoms.chest_xray import ChestXrayAnatomy, render_chest_xray
from models.plugins.dx_chest.chest import (
    MODEL_SIZE,
    ChestMasks,
    masks_from_logits,
    measure_ctr,
    preprocess,
    soft_targets,
)
from models.plugins.dx_chest.network import SmallUNet

HERE = Path(__file__).resolve().parent
HELD_OUT_SEED_START = 1_000_000
HELD_OUT_SEED_END = 2_000_000
ONNX_OPSET = 17

log = logging.getLogger("dx_chest.train")


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 20260101
    phantoms: int = 400
    epochs: int = 14
    batch_size: int = 16
    learning_rate: float = 3e-3
    base_width: int = 8
    held_out: int = 16
    held_out_size: int = 512
    threads: int = 1  # on shared cores one thread beats two oversubscribed ones

    def __post_init__(self) -> None:
        if self.seed < HELD_OUT_SEED_END and self.seed + self.phantoms > HELD_OUT_SEED_START:
            raise ValueError(
                f"training seeds {self.seed}..{self.seed + self.phantoms - 1} overlap the "
                f"held-out range {HELD_OUT_SEED_START}..{HELD_OUT_SEED_END - 1}; pick another seed"
            )


def training_anatomy(seed: int) -> ChestXrayAnatomy:
    """A random patient for training: CTR 0.34-0.68, 150-290 pixels, various fields."""
    rng = np.random.default_rng(seed)
    return ChestXrayAnatomy(
        ctr=float(rng.uniform(0.34, 0.68)),
        rows=int(rng.integers(150, 290)),
        columns=int(rng.integers(150, 290)),
        field_mm=(float(rng.uniform(360, 440)), float(rng.uniform(340, 440))),
        seed=seed,
    )


def held_out_anatomy(index: int, size: int = 512) -> ChestXrayAnatomy:
    """Unseen patients, alternating normal hearts and cardiomegaly, CTR 0.38-0.64."""
    rng = np.random.default_rng(HELD_OUT_SEED_START + index)
    ctr = rng.uniform(0.38, 0.47) if index % 2 == 0 else rng.uniform(0.53, 0.64)
    return ChestXrayAnatomy(
        ctr=float(ctr), rows=size, columns=size, seed=HELD_OUT_SEED_START + index
    )


def make_dataset(seeds: range) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = [], []
    for seed in seeds:
        phantom = render_chest_xray(training_anatomy(seed))
        inputs.append(preprocess(phantom.image)[0])
        targets.append(soft_targets(phantom.truth.lungs, phantom.truth.heart))
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft-target cross entropy plus a soft Dice on lungs and heart."""
    cross_entropy = -(target * functional.log_softmax(logits, dim=1)).sum(dim=1).mean()
    probabilities = functional.softmax(logits, dim=1)[:, 1:]
    overlap = (probabilities * target[:, 1:]).sum(dim=(2, 3))
    total = probabilities.sum(dim=(2, 3)) + target[:, 1:].sum(dim=(2, 3))
    dice = (2 * overlap + 1) / (total + 1)
    return cross_entropy + (1 - dice).mean()


def train(config: TrainingConfig) -> nn.Module:
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    started = time.monotonic()
    inputs, targets = make_dataset(range(config.seed, config.seed + config.phantoms))
    log.info("rendered %d phantoms in %.0fs", config.phantoms, time.monotonic() - started)
    model = SmallUNet(config.base_width)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    steps = config.epochs * ((config.phantoms + config.batch_size - 1) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=steps, pct_start=0.15
    )
    order = torch.Generator().manual_seed(config.seed)
    model.train()
    for epoch in range(config.epochs):
        permutation = torch.randperm(config.phantoms, generator=order)
        total = 0.0
        for start in range(0, config.phantoms, config.batch_size):
            batch = permutation[start : start + config.batch_size]
            loss = _loss(model(inputs[batch]), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch)
        log.info(
            "epoch %d/%d loss %.4f (%.0fs)",
            epoch + 1,
            config.epochs,
            total / config.phantoms,
            time.monotonic() - started,
        )
    return model.eval()


def export_onnx(model: nn.Module, path: Path) -> None:
    example = torch.zeros(1, 1, *MODEL_SIZE)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    denominator = predicted.sum() + truth.sum()
    return 1.0 if denominator == 0 else float(2 * (predicted & truth).sum() / denominator)


def evaluate(
    infer: Callable[[np.ndarray], np.ndarray], count: int, size: int = 512
) -> dict[str, float]:
    """Dice and CTR error on ``count`` held-out phantoms, run exactly as the plugin runs."""
    lung_dice, heart_dice, ctr_error = [], [], []
    for index in range(count):
        phantom = render_chest_xray(held_out_anatomy(index, size))
        masks: ChestMasks = masks_from_logits(infer(preprocess(phantom.image))[0], (size, size))
        lung_dice.append(dice(masks.lungs, phantom.truth.lungs))
        heart_dice.append(dice(masks.heart, phantom.truth.heart))
        measured = measure_ctr(masks.lungs, masks.heart, phantom.anatomy.pixel_spacing[1])
        ctr_error.append(abs(measured.ratio - phantom.truth.ctr))
    return {
        "held_out_phantoms": count,
        "lung_dice_min": round(min(lung_dice), 4),
        "lung_dice_mean": round(float(np.mean(lung_dice)), 4),
        "heart_dice_min": round(min(heart_dice), 4),
        "heart_dice_mean": round(float(np.mean(heart_dice)), 4),
        "ctr_error_max": round(max(ctr_error), 4),
        "ctr_error_rms": round(float(np.sqrt(np.mean(np.square(ctr_error)))), 4),
    }


def onnx_infer(model_path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"image": batch})[0]


def write_manifest_sha256(manifest: Path, sha256: str) -> None:
    text = manifest.read_text(encoding="utf-8")
    updated, count = re.subn(r"(sha256:\s*\"?)[0-9a-fA-F]{64}", rf"\g<1>{sha256}", text)
    if count != 1:
        raise ValueError(f"{manifest}: expected exactly one model sha256 to update, found {count}")
    manifest.write_text(updated, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE, help="where model.onnx goes")
    parser.add_argument("--phantoms", type=int, default=TrainingConfig.phantoms)
    parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = TrainingConfig(phantoms=args.phantoms, epochs=args.epochs)
    torch.set_num_threads(config.threads)
    started = time.monotonic()
    model = train(config)
    train_seconds = time.monotonic() - started
    args.output.mkdir(parents=True, exist_ok=True)
    model_path = args.output / "model.onnx"
    export_onnx(model, model_path)
    sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    metrics = evaluate(onnx_infer(model_path), config.held_out, config.held_out_size)
    report = {
        "config": asdict(config),
        "train_seconds": round(train_seconds, 1),
        "model_sha256": sha256,
        **metrics,
    }
    (args.output / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if (args.output / "plugin.yaml").is_file():
        write_manifest_sha256(args.output / "plugin.yaml", sha256)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
