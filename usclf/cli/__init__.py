"""The `usclf` command: each sub-command parses its options into a config and calls one stage function.

Every sub-command accepts `--config FILE.yaml` (typed dataclass config, see configs/) and trailing
`key=value` overrides (dotted for nested keys, e.g. `train.epochs=5`). Problems with the user's input are
reported as one line on stderr (exit status 2), never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from ..errors import run_reporting
from ..studies.entry import STUDIES  # noqa: F401  (name -> (module, help); `usclf study` lists it)

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help_text: str, target: str):
    """Register a sub-command: `target` is 'module:function' taking the parsed args (imported lazily)."""
    def deco(add_args: Callable[[argparse.ArgumentParser], None]):
        COMMANDS[name] = (help_text, add_args, target)
        return add_args
    return deco


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", metavar="YAML", help="YAML config file (see configs/); options below and "
                       "key=value overrides take precedence")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, dotted for nested keys (e.g. train.epochs=5)")
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: env MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow.db in the working directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


@command("simulate", "write simulated ultrasound exam folders + labels.csv (development data, not science)",
         "usclf.cli.data:run_simulate")
def _simulate(p):
    p.add_argument("--exams", type=int, help="number of exams to simulate (default 20)")
    p.add_argument("--out", required=True, help="output folder (exam sub-folders + labels.csv)")
    p.add_argument("--format", choices=["png", "dicom", "mixed"], help="file format of the frames (default png)")
    p.add_argument("--frame-size", type=int, metavar="PX", help="frame size in pixels (default 128; key size)")
    p.add_argument("--size", type=int, dest="size_deprecated", help=argparse.SUPPRESS)  # before --frame-size
    p.add_argument("--seed", type=int, help="random seed (default 0): same seed, same files")
    _common(p)


@command("ingest", "read exam folders (DICOM/PNG/JPEG) into a clean cache + manifest, then split by patient",
         "usclf.cli.data:run_ingest")
def _ingest(p):
    p.add_argument("root", help="export root: one folder per exam (or DICOM studies anywhere below)")
    p.add_argument("--out", required=True, help="dataset folder to write (images.npy, manifest.csv, report)")
    p.add_argument("--labels", metavar="CSV", help="labels CSV: path[,frame] + one 0/1 column per class")
    p.add_argument("--size", type=int, help="cache image size in pixels (default 128)")
    p.add_argument("--no-split", action="store_true", help="only ingest; leave every row 'unlabeled'")
    _common(p)


@command("split", "re-draw the patient-disjoint unlabeled/train/val/test split of an ingested dataset",
         "usclf.cli.data:run_split")
def _split(p):
    p.add_argument("data", help="dataset folder written by `usclf ingest`")
    p.add_argument("--seed", type=int, help="split seed")
    _common(p)


@command("pretrain", "deep clustering (PICA, LSD, ...) on unlabelled exams; writes a clustering model file",
         "usclf.cli.train:run_pretrain")
def _pretrain(p):
    p.add_argument("--data", help="dataset folder written by `usclf ingest` (config key data.path)")
    p.add_argument("--out", help="output folder for checkpoints, model.pt and config.yaml (key out)")
    from ..methods import PRETRAIN, help_text  # import-light catalogue
    p.add_argument("--method", choices=list(PRETRAIN), help="clustering method (key method; default lsd; its own "
                   "options go under options.NAME=VALUE). " + help_text("pretrain"))
    p.add_argument("--seed", type=int, help="training seed (key train.seed)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    _common(p)


@command("evaluate", "score a model: cluster matching (Algorithm 1), per-class thresholds on validation, "
         "test report, clustering metrics, t-SNE and cluster gallery", "usclf.cli.train:run_evaluate")
def _evaluate(p):
    p.add_argument("--model", help="model file (model.pt) from pretrain, finetune or semisup")
    p.add_argument("--data", help="dataset folder written by `usclf ingest` (key data.path)")
    p.add_argument("--out", help="output folder for the report, figures, gallery and the thresholded model")
    _common(p)


def _trainer_args(p: argparse.ArgumentParser) -> None:
    """Options shared by finetune and semisup."""
    p.add_argument("--data", help="dataset folder written by `usclf ingest` (config key data.path)")
    p.add_argument("--out", help="output folder for checkpoints, model.pt, config.yaml and eval/ (key out)")
    p.add_argument("--init", metavar="random|imagenet|PATH", help="feature-extractor init: random, imagenet "
                   "(local weights only: key model.imagenet_weights or env USCLF_IMAGENET_WEIGHTS, else the "
                   "HF/torch hub cache) or a usclf model/checkpoint file, e.g. a pretrain model.pt (key model.init)")
    p.add_argument("--label-fraction", type=float, metavar="F", help="share of the labelled train exams to "
                   "use, in (0, 1] (paper: 0.1, 0.2, 0.5, 1); nested across fractions (key label_fraction)")
    p.add_argument("--seed", type=int, help="training seed, also the label-subset seed unless fraction_seed "
                   "is set (key train.seed)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    _common(p)


@command("finetune", "supervised multi-label classifier (BCE) from random / ImageNet / pretrain init: early "
         "stopping on validation F1, per-class thresholds, test report", "usclf.cli.train:run_finetune")
def _finetune(p):
    from ..methods import help_text  # import-light catalogue
    _trainer_args(p)
    p.epilog = "its method (configs/methods.yaml, finetune): " + help_text("finetune")


@command("semisup", "semi-supervised multi-label training (FixMatch with one or two heads, FreeMatch, distribution "
         "alignment, CAP) on labelled + unlabelled exams: fixed steps, best validation F1, per-class thresholds, "
         "test report, pseudo-label diagnostics", "usclf.cli.train:run_semisup")
def _semisup(p):
    from ..methods import help_text  # import-light catalogue
    p.add_argument("--method", help="training method (key method; default fixmatch-twohead; its own options go "
                   "under options.NAME=VALUE). " + help_text("semisup"))
    p.add_argument("--heads", choices=["one", "two"], help="shorthand for --method fixmatch-onehead / "
                   "fixmatch-twohead")
    _trainer_args(p)


def _baseline_help() -> str:
    from ..methods import help_text  # import-light catalogue: no torch import for --help
    return help_text("baseline")


@command("baseline", "classic clustering baselines (k-means on pixels/PCA/HOG/LBP, AE + k-means, DEC, IDEC, "
         "IDEC + graph, CAE + k-means, CDEC, CIDEC, DCEC, IDCEC, DeepCluster): fit, then the shared matching and "
         "evaluation", "usclf.cli.train:run_baseline")
def _baseline(p):
    p.add_argument("--method", help="baseline to run (default dec). " + _baseline_help())
    p.add_argument("--data", help="dataset folder from `usclf ingest`, or a MedMNIST/USPS/MNIST .npz (key data)")
    p.add_argument("--out", help="output folder: assignments.csv, metrics.json, report.csv, figures/ (key out)")
    p.add_argument("--k", type=int, help="number of clusters (default: the number of label combinations)")
    p.add_argument("--seed", type=int, help="seed for k-means and training (key seed)")
    p.add_argument("--resume", action="store_true", help="reuse OUT/autoencoder.pt and continue training "
                   "from the checkpoints in OUT")
    _common(p)


@command("predict", "run a model over exam folders (DICOM/PNG/JPEG): per-image class scores, thresholded labels "
         "and skip reasons, plus a per-exam organ inventory; resumable", "usclf.cli.predict:run_predict")
def _predict(p):
    p.add_argument("--model", required=True, help="model file with thresholds (OUT/model.pt of `usclf evaluate`, "
                   "finetune or semisup)")
    p.add_argument("--input", required=True, metavar="DIR", help="folder of exam folders (read like ingest)")
    p.add_argument("--out", required=True, metavar="FILE", help="output .csv, .parquet or .json/.jsonl (JSON "
                   "Lines); the inventory goes to FILE_exams.EXT; rerun the same command to resume a killed run")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=0, help="processes decoding files (default 0: in this process)")
    p.add_argument("--dicom-sr", metavar="DIR", help="also write one DICOM Comprehensive SR per study of the DICOM "
                   "inputs into DIR: per-organ presence, probability, threshold, the model's identity, references "
                   "to the source instances (PNG/JPEG inputs keep the rows only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

# study name -> (module under usclf.studies, one line for --help); import-light so --help stays fast


@command("export", "model file -> ONNX / TorchScript / MLflow pyfunc model, checked against PyTorch; optionally "
         "registered in the MLflow model registry (alias 'champion' = best validation F1)",
         "usclf.cli.export:run_export")
def _export(p):
    p.add_argument("--model", required=True, help="model file with thresholds (the model.pt of finetune/semisup, "
                   "or evaluate's eval/model.pt for a clustering model)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "mlflow"],
                   help="onnx / torchscript: one graph, pixels 0-255 (N x 1 x S x S) -> scores + labels, metadata "
                   "inside; mlflow: a pyfunc folder taking raw frames (N x H x W uint8)")
    p.add_argument("--out", required=True, help="output file (.onnx / .pt) or folder (mlflow)")
    p.add_argument("--data", help="dataset folder from `usclf ingest`: check parity on its first 64 cache images "
                   "(default: 8 seeded random frames)")
    p.add_argument("--tol", type=float, default=1e-4, help="largest |score difference| to PyTorch accepted "
                   "(default 1e-4); above it nothing is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--register", metavar="NAME", help="also register the MLflow model as a new version of NAME "
                   "in the tracking server's model registry (needs --format mlflow)")
    p.add_argument("--alias", default="champion", help="registry alias moved to the new version when its "
                   "validation F1 beats the current holder's (default champion)")
    _common(p, config=False)


@command("suggest", "rank unlabelled frames to label next: cover clusters with few labelled frames (most typical "
         "first), then the most uncertain; near-duplicates of one sweep collapsed",
         "usclf.cli.suggest:run_suggest")
def _suggest(p):
    p.add_argument("--model", required=True, help="model file: a classifier with thresholds (uncertainty = margin to "
                   "the threshold) or a clustering model (1 - max cluster probability)")
    p.add_argument("--data", required=True, help="dataset folder written by `usclf ingest` (with a split)")
    p.add_argument("--budget", type=int, required=True, help="number of frames to suggest")
    p.add_argument("--out", required=True, help="output folder: suggestions.csv, suggestions.html + thumbnails")
    p.add_argument("--clusters", metavar="MODEL", help="clustering model whose clusters are covered (default: the "
                   "clusters / label sets of --model)")
    p.add_argument("--labeled", metavar="CSV", help="image_id column: the frames labelled so far (default: every "
                   "row with labels)")
    p.add_argument("--pool", default="unlabeled", help="comma-separated splits to suggest from (default unlabeled)")
    p.add_argument("--strategy", default="coverage", choices=["coverage", "uncertainty", "random"],
                   help="coverage (default): clusters first, then uncertainty; uncertainty only; random")
    p.add_argument("--cover", type=int, default=1, help="labelled frames wanted per cluster before uncertainty "
                   "takes over (default 1)")
    p.add_argument("--dup-corr", type=float, default=0.95, help="thumbnail correlation at which a frame counts as a "
                   "near duplicate of a chosen/labelled frame of its exam (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy (default 0)")
    p.add_argument("--split-seed", type=int, default=0, help="split manifest to read (default 0)")
    _common(p, config=False)


def run_study_command(argv: list[str]) -> int:
    """`usclf study NAME [ARGS...]`: the study's own command line (same as `python pipelines/NAME.py`)."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: usclf study NAME [ARGS...]   (`usclf study NAME --help` for its options)\n\nstudies:")
        for name, (_, text) in STUDIES.items():
            print(f"  {name:<16} {text}")
        return 0 if argv else 1
    if argv[0] not in STUDIES:
        print(f"usclf study: error: unknown study '{argv[0]}'; valid: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    from ..studies.entry import run_study_cli  # locks the study's output and prints its errors as one line
    return run_study_cli(argv[0], argv[1:])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="usclf", description="Semi-supervised ultrasound organ classification: deep clustering "
        "(PICA/LSD), cluster matching, supervised and FixMatch fine-tuning, batch prediction.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `usclf COMMAND --help` for the options of each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
    sub.add_parser("study", help="run a study pipeline: " + ", ".join(STUDIES) + " (`usclf study --help`)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["study"]:  # the study parses its own arguments
        return run_study_command(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [x for x in extra if x.startswith("-") or "=" not in x]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if not args.command:
        parser.print_help()
        return 1
    if extra and not hasattr(args, "overrides"):  # export / suggest / predict take no key=value overrides
        print(f"usclf {args.command}: error: unexpected argument(s) {' '.join(extra)}: `usclf {args.command}` "
              "takes no key=value config overrides (see its --help)", file=sys.stderr)
        return 2
    if extra:  # key=value overrides given after options land here (argparse stops positionals early)
        args.overrides = list(args.overrides or []) + extra
    module, func = COMMANDS[args.command][2].split(":")

    def call():
        import importlib
        getattr(importlib.import_module(module), func)(args)

    return run_reporting(f"usclf {args.command}", call)

