"""The paper tables baseline_check reproduces, one (data set, method, seed) cell's configuration, its results' rows."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

from usclf.config import apply_overrides
from usclf.baselines.config import BaselineConfig

NAN = float("nan")
EXPERIMENT = "usclf-baseline-check"
ABDOMEN = ["kmeans", "deepcluster", "pica", "lsd"]
ORDER = ["kmeans", "pca-kmeans", "hog-kmeans", "lbp-kmeans", "ae-kmeans", "dec", "idec", "idec-graph"]
DIGITS = ["kmeans", "ae-kmeans", "dec", "idec", "dcec", "idcec"]
METRICS = ("acc", "nmi", "ari")
SECTION = {"ae-kmeans": "ae", "dec": "ae", "idec": "ae", "idec-graph": "ae", "cae-kmeans": "cae",
           "cdec": "cae", "cidec": "cae", "dcec": "dcec", "idcec": "idcec",   # method -> its autoencoder
           "deepcluster": "deepcluster", "pica": "clusternet", "lsd": "clusternet"}   # (or its network)
CLUSTERING = {"dec", "idec", "idec-graph", "cdec", "cidec"}                # use the `dec` section
CONFIG_SECTIONS = {"features", "ae", "cae", "dec", "graph", "dcec", "idcec", "deepcluster", "clusternet"}
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
_P004 = "not stated in paper 004 (Sec. 4.5: each baseline's own published settings)"
PAPER_004_LENGTHS = {"dec": _P004, "idec": _P004, "dcec": _P004 + "; official DCEC code: AE 200 ep, <= 20000 steps",
                     "idcec": "not stated in paper 004; official IDCEC code: AE 400 ep, <= 4000 steps, "
                              "CNN 50 ep x 30 rounds"}


class Spec(NamedTuple):
    title: str
    table: str                      # the paper's table, e.g. "Table 2"
    file: str                       # below ../shared/data
    fit_splits: list[str]
    k: int
    paper: str                      # paper id
    numbers: dict                   # method -> (ACC, NMI, ARI) in the table's unit
    scale: float                    # 100: table in %, 1: fractions
    methods: list[str]
    lengths: dict                   # method -> the paper's training lengths, as text
    clustered: str                  # which images, in words
    ingest: dict | None = None      # a folder of exams (export/ + labels.csv): ingest + split settings


DATASETS = {
    "breastmnist": Spec("BreastMNIST", "Table 2", "breastmnist/breastmnist.npz", ["all"], 2, "000",
                        {"kmeans": (55.00, NAN, NAN), "ae-kmeans": (60.90, NAN, NAN), "dec": (62.05, NAN, NAN),
                         "idec": (63.08, NAN, NAN), "idec-graph": (72.05, NAN, NAN)}, 100.0, ORDER,
                        {m: "AE 400 ep, Adam 3e-4, batch 256 (paper 000 Sec. 4.2)"
                         for m in ("ae-kmeans", "dec", "idec", "idec-graph")},
                        "all 780 images (train + val + test; 73.08 % in one class)"),
    "usps": Spec("USPS", "Table 3", "usps/usps.npz", ["all"], 10, "004",
                 {"kmeans": (0.668, 0.626, 0.545), "dec": (0.733, 0.706, 0.637), "idec": (0.762, 0.756, 0.679),
                  "dcec": (0.790, 0.826, 0.764), "idcec": (0.812, 0.858, 0.772)}, 1.0, DIGITS, PAPER_004_LENGTHS,
                 "all 9298 images (x_train + x_test)"),
    # issue 27 item 4: no paper table (paper 002's DeepMCAT numbers are on its own, unreleased data); every
    # method clusters the same frames of the subject split (labels never used in fitting), K = the label combinations
    "abdomen_us": Spec("abdomen_us, real abdominal ultrasound", "", "abdomen_us", ["all"], None, "002", {}, 1.0, ABDOMEN,
                       {"deepcluster": "paper 002: 200 epochs, batch 256, SGD 0.05"},
                       "the 460 frames of the subject split (the 400 of the 7 unlabelled subjects and the 60 "
                       "labelled frames of the other 4; labels never used in fitting); ACC / NMI / ARI on the "
                       "60 labelled frames; test weighted F1 on the test subject, clusters matched to labels and "
                       "thresholds chosen on the val subject (Algorithm 1, as `usclf evaluate`)",
                       {"classes": ["liver", "gallbladder", "kidney", "spleen", "vessels", "other"], "size": 64,
                        "split": {"unlabeled": 7, "train": 2, "val": 1, "test": 1}}),
    "mnist-test": Spec("MNIST-test", "Table 2", "mnist/mnist_full.npz", ["test"], 10, "004",
                       {"kmeans": (0.542, 0.500, 0.378), "dec": (0.776, 0.724, 0.660), "idec": (0.791, 0.736, 0.666),
                        "dcec": (0.852, 0.809, 0.773), "idcec": (0.923, 0.853, 0.851)}, 1.0, DIGITS,
                       PAPER_004_LENGTHS, "the 10000 test images of mnist_full.npz"),
}


def uses(method: str, key: str) -> bool:
    """Whether setting `key` (e.g. 'dec.max_steps', 'k') can change `method`'s result."""
    top = key.split(".")[0]
    if top not in CONFIG_SECTIONS:
        return True
    return top == "features" or top == SECTION.get(method) or (top == "dec" and method in CLUSTERING) \
        or (top == "graph" and method == "idec-graph")


def setting_items(ae_epochs: int | None = None, epochs: dict | None = None,
                  overrides: list[str] | None = None) -> dict:
    """--ae-epochs, --epochs SECTION=N and --set KEY=VALUE as one {key: value} (later options win)."""
    items = {f"{sec}.epochs": str(ae_epochs) for sec in ("ae", "cae", "dcec", "idcec") if ae_epochs is not None}
    items.update({f"{sec}.epochs": str(n) for sec, n in (epochs or {}).items()})
    for item in overrides or []:
        key, _, value = item.partition("=")
        items[key] = value
    return items


def cell_settings(method: str, items: dict, data_note: str = "") -> str:
    """The settings that differ from the defaults and matter to `method`, as sorted KEY=VALUE text ('' = none).
    `data_note` names a non-default .npz, so that its cells never pass for the shared data set's."""
    text = " ".join(f"{k}={v}" for k, v in sorted(items.items()) if uses(method, k))
    return " ".join(t for t in (text, data_note and f"data={data_note}") if t)


def config_items(settings: str) -> list[str]:
    """The KEY=VALUE overrides of a settings text (its data= note is not a config key here)."""
    return [t for t in settings.split() if not t.startswith("data=")]


def method_config(m: str, seed: int, data: Path, out: Path, spec: Spec, overrides: list[str] | None = None
                  ) -> BaselineConfig:
    """One cell's config: the data set's protocol, then KEY=VALUE overrides."""
    cfg = BaselineConfig(method=m, data=str(data), out=str(out), seed=seed, k=spec.k, fit_splits=list(spec.fit_splits),
                         figures=False, progress=False, experiment=EXPERIMENT)
    return apply_overrides(cfg, list(overrides or []))


def training_lengths(cfg: BaselineConfig) -> str:
    """The training lengths one config uses, as text for the report."""
    sec = SECTION.get(cfg.method)
    if sec is None:
        return f"k-means n_init {cfg.features.n_init}" if cfg.method.endswith("kmeans") else "see config.yaml"
    c = getattr(cfg, sec)
    if sec in ("deepcluster", "clusternet"):
        return f"{c.epochs} ep at {c.size} px"
    text = f"AE {c.epochs} ep"
    if sec in ("dcec", "idcec"):
        text += f", <= {c.cluster.max_steps} steps"
    elif "dec" in cfg.method:
        text += f", <= {cfg.dec.max_steps} steps"
    if sec == "idcec":
        text += f", CNN {c.cnn.epochs} ep x {c.rounds} rounds"
    return text


def read_results(path: Path) -> list[dict]:
    """The results file's rows (all values text), [] when there is none yet."""
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
