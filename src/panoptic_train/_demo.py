"""`panoptic-train demo` (what `make demo` runs): the whole tool on a synthetic dataset, on CPU.

Writes a synthetic COCO panoptic dataset, trains a tiny EoMT from random weights for a few
minutes, scores the best model on the validation split from files (as `panoptic-train evaluate`
would), predicts one image and draws the result; every output's location is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Try everything on a synthetic dataset: train a tiny model on CPU, evaluate, predict, draw."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder (out/demo)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (300)")
    parser.add_argument("--train-images", type=int, default=64, help="synthetic train images (64)")
    parser.add_argument("--val-images", type=int, default=16, help="synthetic val images (16)")
    parser.add_argument(
        "--image-size", type=int, default=128, help="square training/inference size (128)"
    )
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed (0)")


def run(args: argparse.Namespace) -> int:
    from panoptic_train.data.synthetic import write_dataset
    from panoptic_train.errors import ConfigError
    from panoptic_train.evaluation.files import evaluate_panoptic
    from panoptic_train.evaluation.report import format_summary
    from panoptic_train.inference.model import load_model
    from panoptic_train.inference.predict_files import (
        collect_images,
        image_ids_from_annotations,
        predict_files,
    )
    from panoptic_train.inference.visualize import visualize
    from panoptic_train.train.api import train_panoptic_segmentation

    if args.steps < 1 or args.train_images < 1 or args.val_images < 1 or args.image_size < 16:
        raise ConfigError(
            "demo needs --steps, --train-images and --val-images of at least 1 and an "
            "--image-size of at least 16."
        )
    out = Path(args.out)
    size = args.image_size
    source_size = (size * 3 // 4, size)  # 4:3 images, as photos often are

    print(f"[1/4] Writing the synthetic dataset to {out / 'data'}")
    data = {
        split: write_dataset(
            out / "data", count, image_size=source_size, seed=args.seed, split=split
        )
        for split, count in (("train", args.train_images), ("val", args.val_images))
    }

    print(f"[2/4] Training a tiny EoMT (dinov3/vitt16-eomt, random init) for {args.steps} steps")
    train_dir = out / "train"
    train_panoptic_segmentation(
        out=train_dir,
        data=data,
        model="dinov3/vitt16-eomt",
        steps=args.steps,
        batch_size=4,
        accelerator="cpu",
        # Small images decode in milliseconds; a worker process would only compete with the
        # training threads for the few cores of a laptop.
        num_workers=0,
        seed=args.seed,
        overwrite=True,
        transform_args={"image_size": (size, size)},
        # A from-scratch tiny model on a small dataset: a higher learning rate and no layer-wise
        # decay (there are no pretrained layers to protect); fewer queries and points for speed.
        model_args={
            "backbone_weights": None,
            "num_queries": 20,
            "loss_num_points": 1024,
            "lr": 1e-3,
            "llrd": 1.0,
        },
        logger_args={"val_every_num_steps": max(1, args.steps // 3)},
    )
    best = train_dir / "exported_models" / "exported_best.pt"

    print(f"[3/4] Evaluating {best} on the validation images")
    model = load_model(best, device="cpu")
    predictions = out / "predictions"
    val_images = collect_images([data["val"]["images"]])
    image_ids = image_ids_from_annotations(data["val"]["annotations"])
    report = predict_files(model, val_images, predictions, image_ids=image_ids, overwrite=True)
    metrics_file = out / "metrics.json"
    results = evaluate_panoptic(
        data["val"]["annotations"],
        data["val"]["masks"],
        report.predictions_json,
        predictions / "panoptic",
        out=metrics_file,
    )
    print(format_summary(results))

    print("[4/4] Predicting one image and drawing the result")
    image = val_images[0]
    overlay = out / "overlay.png"
    visualize(image, model.predict(image), model.classes).save(overlay)

    print(
        "\nDemo outputs:\n"
        f"  dataset        {out / 'data'}\n"
        f"  best model     {best}\n"
        f"  last model     {train_dir / 'exported_models' / 'exported_last.pt'}\n"
        f"  checkpoint     {train_dir / 'checkpoints' / 'last.ckpt'}\n"
        f"  training logs  {train_dir / 'logs'} (tensorboard --logdir {train_dir})\n"
        f"  predictions    {predictions} (COCO panoptic PNG + predictions.json)\n"
        f"  metrics        {metrics_file} (PQ {100 * results['All']['pq']:.1f})\n"
        f"  overlay        {overlay} (of {image})"
    )
    return 0
