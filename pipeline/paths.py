"""Every path the stages read or write, relative to the repository root (the
folder DVC runs stages in). dvc.yaml names the same paths."""

from pathlib import Path

PARAMS_FILE = Path("params.yaml")

DATA_DIR = Path("data")
RAW_DIR = DATA_DIR / "raw"  # DVC output of `download`; torchvision's MNIST root
MNIST_SUBDIR = Path("MNIST", "raw")  # where torchvision.datasets.MNIST looks in a root
DIGESTS_NAME = "digests.json"  # SHA-256 of the four files: the data's lineage
MNIST_RAW_DIR = RAW_DIR / MNIST_SUBDIR
DIGESTS_FILE = RAW_DIR / DIGESTS_NAME

MODELS_DIR = DATA_DIR / "models"  # <variant>/: seed<k>.pt, history.json, mlflow_runs.json
HISTORY_NAME = "history.json"
RUNS_NAME = "mlflow_runs.json"

REPORTS_DIR = Path("reports")
TRAIN_REPORTS_DIR = REPORTS_DIR / "train"  # <variant>.json (summary), <variant>.csv (DVC plots)
METRICS_FILE = REPORTS_DIR / "metrics.json"  # evaluate: DVC metrics, what experiments compare
STATISTICS_FILE = REPORTS_DIR / "statistics.json"  # evaluate: every number behind them
EVALUATION_FILE = REPORTS_DIR / "evaluation.json"  # evaluate: confusion matrices
ACCURACY_TABLE = REPORTS_DIR / "accuracy.md"
FIGURES_DIR = REPORTS_DIR / "figures"  # visualize
REPORT_MD = REPORTS_DIR / "report.md"
REPORT_HTML = REPORTS_DIR / "report.html"
STUDY_DIR = REPORTS_DIR / "study"  # `make study`: depth.md, depth.html and their figures
PAPER_DIR = REPORTS_DIR / "paper"  # `make paper`: paper.md, paper.html and their figures
