"""A real ML pipeline on scikit-learn's handwritten-digits data set, with declared inlets and outlets.

ingest -> split -> featurize -> train -> evaluate. Each task reads and writes files under the data folder
(``ML_PIPELINE_DATA_DIR``, by default ``$AIRFLOW_HOME/ml_pipeline_data``), and declares them, so the CMF
listener records every file it reads as an input artifact and every file it writes as an output artifact.
The training and evaluation tasks are CMF tasks (``@cmf_task``): training logs the model with its framework
and type and the loss and accuracy of every epoch, and evaluation logs the model as its input and the test
metrics. The digits ship inside scikit-learn: the pipeline downloads nothing.
"""

from __future__ import annotations

import os
from datetime import datetime

from cmf_airflow.compat import DAG, task

from cmf_airflow import File, file_asset
from cmf_airflow.operators import cmf_task

DATA_DIR = os.path.abspath(
    os.environ.get(
        "ML_PIPELINE_DATA_DIR",
        os.path.join(os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow")), "ml_pipeline_data"),
    )
)
RAW = os.path.join(DATA_DIR, "raw", "digits.csv")
SPLIT = os.path.join(DATA_DIR, "split")
FEATURES = os.path.join(DATA_DIR, "features")
MODEL = os.path.join(DATA_DIR, "model", "model.pkl")

with DAG(
    dag_id="ml_pipeline",
    description="Digits classifier: ingest, split, featurize, train, evaluate",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"test_size": 0.25, "seed": 42, "epochs": 8, "alpha": 0.0001},
    tags=["cmf", "example"],
) as dag:

    @task(outlets=[file_asset(RAW)])
    def ingest() -> None:
        """Write the digits data set (8x8 images, 64 pixel columns and a label) to a CSV file."""
        import numpy as np
        from sklearn.datasets import load_digits

        digits = load_digits()
        table = np.column_stack([digits.data, digits.target])
        header = ",".join([f"pixel_{i}" for i in range(digits.data.shape[1])] + ["label"])
        os.makedirs(os.path.dirname(RAW), exist_ok=True)
        np.savetxt(RAW, table, delimiter=",", header=header, comments="", fmt="%d")

    @task(inlets=[file_asset(RAW)], outlets=[File(SPLIT)])
    def split(params: dict | None = None) -> None:
        """Split the raw table into train.csv and test.csv, stratified by label."""
        import numpy as np
        from sklearn.model_selection import train_test_split

        table = np.loadtxt(RAW, delimiter=",", skiprows=1)
        train, test = train_test_split(
            table,
            test_size=float(params["test_size"]),
            random_state=int(params["seed"]),
            stratify=table[:, -1],
        )
        os.makedirs(SPLIT, exist_ok=True)
        for name, part in (("train.csv", train), ("test.csv", test)):
            np.savetxt(os.path.join(SPLIT, name), part, delimiter=",", fmt="%d")

    @task(inlets=[File(SPLIT)], outlets=[File(FEATURES)])
    def featurize() -> None:
        """Scale pixel intensities to [0, 1] and store features and labels as .npy arrays."""
        import numpy as np

        os.makedirs(FEATURES, exist_ok=True)
        for part in ("train", "test"):
            table = np.loadtxt(os.path.join(SPLIT, f"{part}.csv"), delimiter=",")
            np.save(os.path.join(FEATURES, f"{part}_x.npy"), table[:, :-1] / 16.0, allow_pickle=False)
            np.save(os.path.join(FEATURES, f"{part}_y.npy"), table[:, -1].astype(np.int64), allow_pickle=False)

    @cmf_task(inlets=[File(FEATURES)])
    def train(cmf, params: dict | None = None) -> None:
        """Fit a linear classifier epoch by epoch with SGD, logging each epoch's loss and accuracy, then the model."""
        import pickle

        import numpy as np
        from sklearn.linear_model import SGDClassifier
        from sklearn.metrics import accuracy_score, log_loss

        x = np.load(os.path.join(FEATURES, "train_x.npy"))
        y = np.load(os.path.join(FEATURES, "train_y.npy"))
        classes = np.unique(y)
        model = SGDClassifier(loss="log_loss", alpha=float(params["alpha"]), random_state=int(params["seed"]))
        cmf.log_params({"epochs": int(params["epochs"]), "alpha": float(params["alpha"]), "loss": "log_loss"})
        for _ in range(int(params["epochs"])):
            model.partial_fit(x, y, classes=classes)
            cmf.log_step_metrics(
                "training",
                {
                    "log_loss": float(log_loss(y, model.predict_proba(x), labels=classes)),
                    "accuracy": float(accuracy_score(y, model.predict(x))),
                },
            )
        cmf.commit_step_metrics("training")

        os.makedirs(os.path.dirname(MODEL), exist_ok=True)
        with open(MODEL, "wb") as file:
            pickle.dump(model, file)
        cmf.log_model(MODEL, framework="scikit-learn", model_type="SGDClassifier", name="digits-classifier")

    @cmf_task(inlets=[File(FEATURES)])
    def evaluate(cmf) -> None:
        """Score the model on the test features and log accuracy and macro F1 as CMF metrics."""
        import pickle

        import numpy as np
        from sklearn.metrics import accuracy_score, f1_score

        cmf.log_model(MODEL, framework="scikit-learn", model_type="SGDClassifier", event="input")
        with open(MODEL, "rb") as file:
            model = pickle.load(file)
        x = np.load(os.path.join(FEATURES, "test_x.npy"))
        y = np.load(os.path.join(FEATURES, "test_y.npy"))
        predicted = model.predict(x)
        cmf.log_metrics(
            "evaluation",
            {
                "accuracy": round(float(accuracy_score(y, predicted)), 6),
                "f1_macro": round(float(f1_score(y, predicted, average="macro")), 6),
                "test_rows": int(len(y)),
            },
        )

    ingest() >> split() >> featurize() >> train() >> evaluate()
