"""A real ML pipeline on scikit-learn's handwritten-digits data set, with declared inlets and outlets.

ingest -> split -> featurize -> train -> evaluate. Each task reads and writes files under the data folder
(``ML_PIPELINE_DATA_DIR``, by default ``$AIRFLOW_HOME/ml_pipeline_data``), and declares them, so the CMF
listener records every file it reads as an input artifact and every file it writes as an output artifact.
The digits ship inside scikit-learn: the pipeline downloads nothing.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

from cmf_airflow.compat import DAG, task

from cmf_airflow import File, file_asset

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
METRICS = os.path.join(DATA_DIR, "metrics", "metrics.json")

with DAG(
    dag_id="ml_pipeline",
    description="Digits classifier: ingest, split, featurize, train, evaluate",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"test_size": 0.25, "seed": 42, "max_iter": 200},
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

    @task(inlets=[File(FEATURES)], outlets=[file_asset(MODEL)])
    def train(params: dict | None = None) -> None:
        """Fit a multinomial logistic regression on the training features and pickle it."""
        import pickle

        import numpy as np
        from sklearn.linear_model import LogisticRegression

        x = np.load(os.path.join(FEATURES, "train_x.npy"))
        y = np.load(os.path.join(FEATURES, "train_y.npy"))
        model = LogisticRegression(max_iter=int(params["max_iter"]), random_state=int(params["seed"]))
        model.fit(x, y)
        os.makedirs(os.path.dirname(MODEL), exist_ok=True)
        with open(MODEL, "wb") as file:
            pickle.dump(model, file)

    @task(inlets=[file_asset(MODEL), File(FEATURES)], outlets=[File(METRICS)])
    def evaluate() -> None:
        """Score the model on the test features and write accuracy and macro F1 to a JSON file."""
        import pickle

        import numpy as np
        from sklearn.metrics import accuracy_score, f1_score

        with open(MODEL, "rb") as file:
            model = pickle.load(file)
        x = np.load(os.path.join(FEATURES, "test_x.npy"))
        y = np.load(os.path.join(FEATURES, "test_y.npy"))
        predicted = model.predict(x)
        metrics = {
            "accuracy": round(float(accuracy_score(y, predicted)), 6),
            "f1_macro": round(float(f1_score(y, predicted, average="macro")), 6),
            "test_rows": int(len(y)),
        }
        os.makedirs(os.path.dirname(METRICS), exist_ok=True)
        with open(METRICS, "w", encoding="utf-8") as file:
            json.dump(metrics, file, indent=2, sort_keys=True)

    ingest() >> split() >> featurize() >> train() >> evaluate()
