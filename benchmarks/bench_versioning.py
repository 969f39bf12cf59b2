"""Time versioning one small file: ``version_file`` against plain ``dvc add`` + ``git commit``, side by side.

Each round versions a new small file (distinct content) in a throw-away git+DVC workspace with each method:

* ``version_file, new process``: a fresh Python process that imports cmf_airflow.versioning and calls
  ``version_file`` once, as an Airflow task process does (includes interpreter start and DVC's import);
* ``version_file, warm process``: a call in this process after DVC was imported and used once;
* ``dvc add + git add + git commit``: the three commands a user would type.

Run: ``python benchmarks/bench_versioning.py [--rounds 5]``. Prints seconds per method as a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cmf_airflow.versioning import version_file

DVC = [sys.executable, "-m", "dvc"]


def _run(folder: Path, *command: str) -> None:
    subprocess.run(list(command), cwd=folder, check=True, capture_output=True)


def _make_workspace(folder: Path) -> Path:
    folder.mkdir(parents=True)
    _run(folder, "git", "init", "-q", "-b", "main")
    _run(folder, "git", "config", "user.email", "bench@example.com")
    _run(folder, "git", "config", "user.name", "cmf-airflow benchmark")
    _run(folder, *DVC, "init", "-q")
    _run(folder, "git", "commit", "-q", "-m", "dvc init")
    return folder


def _new_file(workspace: Path, label: str) -> Path:
    path = workspace / "data" / f"{label}.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"id,value\n1,{label}\n")
    return path


def _version_in_new_process(path: Path) -> None:
    code = "import sys; from cmf_airflow.versioning import version_file; version_file(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, capture_output=True)


def _version_in_this_process(path: Path) -> None:
    version_file(str(path))


def _version_with_commands(path: Path) -> None:
    workspace = path.parents[1]
    relative = path.relative_to(workspace)
    _run(workspace, *DVC, "add", "-q", str(relative))
    _run(workspace, "git", "add", f"{relative}.dvc", str(relative.parent / ".gitignore"))
    _run(workspace, "git", "commit", "-q", "-m", f"Version {relative}")


def _time(action: Callable[[Path], None], path: Path) -> float:
    start = time.perf_counter()
    action(path)
    return time.perf_counter() - start


def main() -> None:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="files versioned per method (default 5)")
    arguments = parser.parse_args()

    methods: dict[str, Callable[[Path], None]] = {
        "version_file, new process": _version_in_new_process,
        "version_file, warm process": _version_in_this_process,
        "dvc add + git add + git commit": _version_with_commands,
    }
    root = Path(tempfile.mkdtemp(prefix="bench-versioning-"))
    try:
        workspace = _make_workspace(root / "workspace")
        # Warm this process once (DVC import and first add) so the warm column measures the per-call cost.
        import_start = time.perf_counter()
        version_file(str(_new_file(workspace, "warm-up")))
        first_call = time.perf_counter() - import_start

        timings: dict[str, list[float]] = {name: [] for name in methods}
        for round_number in range(arguments.rounds):
            # Methods take turns in every round, so that a slow spell on the machine hits all of them.
            for index, (name, action) in enumerate(methods.items()):
                path = _new_file(workspace, f"round-{round_number}-method-{index}")
                timings[name].append(_time(action, path))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {arguments.rounds} rounds, seconds per file")
    print(f"first version_file call in this process (DVC import included): {first_call:.3f} s")
    print(f"{'method':<34}{'median':>9}{'min':>9}{'max':>9}")
    for name, values in timings.items():
        print(f"{name:<34}{statistics.median(values):>9.3f}{min(values):>9.3f}{max(values):>9.3f}")
    baseline = statistics.median(timings["dvc add + git add + git commit"])
    for name in ("version_file, new process", "version_file, warm process"):
        print(f"{name} / commands: {statistics.median(timings[name]) / baseline:.2f}")


if __name__ == "__main__":
    main()
