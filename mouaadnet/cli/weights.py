"""`mouaadnet ship` and `mouaadnet weights verify`: the shipped model folder (built by mouaadnet.export.ship, read
by mouaadnet.weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mouaadnet.cli._common import fail


def register(app: typer.Typer) -> None:
    app.command()(ship)
    weights_app = typer.Typer(help="The shipped weights (weights/).", no_args_is_help=True)
    weights_app.command("verify")(verify)
    app.add_typer(weights_app, name="weights")


def ship(
    checkpoint: Annotated[Path, typer.Argument(help="Trained checkpoint (best.pt / last.pt; EMA weights used).")],
    config: Annotated[Path, typer.Option(help="The training config: INT8 calibrates on its training split and is "
                                              "gated on its validation splits.")] = Path("configs/real.yaml"),
    out: Annotated[Path, typer.Option(help="Weights folder to (re)write.")] = Path("weights"),
    num_calib: Annotated[int, typer.Option(help="INT8 calibration images per mode.")] = 64,
    calibration: Annotated[str, typer.Option(help="INT8 activation ranges from ONNX Runtime's calibrator: MinMax, "
                                                  "Percentile (clips outliers) or Entropy.")] = "MinMax",
    qat_steps: Annotated[int, typer.Option(
        min=0, help="Quantization-aware fine-tuning steps that learn the INT8 ranges (0: PTQ calibration with "
                    "--calibration). Both variants are gated; the QAT one ships unless it fails a gate the "
                    "PTQ one passes (the manifest's int8_choice says which and why).")] = 200,
    val_limit: Annotated[int | None, typer.Option(help="At most this many validation samples per set.")] = None,
    val_data: Annotated[list[str] | None, typer.Option(help="Extra validation sources for the gates (repeatable), "
                                                            "e.g. ../shared/data/pennfudan.")] = None,
    triton_repo: Annotated[str, typer.Option(help="Point this Triton repository's detector version 1 at "
                                                  "the shipped scene model ('' to skip).")] = "triton_repo",
) -> None:
    """Ship a checkpoint: weights/ gets the EMA checkpoint, scene + crop ONNX in FP32 and INT8 with sha256
    sidecars, the gate report on the real validation sets and a manifest (INT8 is the default only if it passed).
    INT8 ranges come from a short quantization-aware fine-tune (--qat-steps; 0 = PTQ calibration)."""
    from mouaadnet.export.ship import link_triton_seed
    from mouaadnet.export.ship import ship as ship_weights

    try:
        report = ship_weights(checkpoint, config, out, num_calib, val_limit, val_data, calibration, qat_steps)
        if triton_repo:  # a str option: typer turns a Path option's '' into '.', the current folder
            typer.echo(f"Triton seed: {link_triton_seed(out, Path(triton_repo))} -> shipped scene model")
    except (OSError, ValueError) as error:
        fail(f"error: {error}")
    typer.echo(report.gates_text)
    default = report.manifest["models"]["scene"]["default"]
    typer.echo(f"shipped {report.directory}/ (default precision {default}; gates "
               f"{'passed' if report.gates_passed else 'FAILED: INT8 is not the default'})")


def verify(directory: Annotated[Path | None, typer.Argument(help="Weights folder (default: weights/).")] = None) -> None:
    """Check every shipped file against its sha256 sidecar."""
    from mouaadnet.weights import WeightsError, verify_weights

    try:
        files = verify_weights(directory)
    except WeightsError as error:
        fail(f"error: {error}")
    for path in files:
        typer.echo(f"ok  {path}")
