"""Time to load the code location, as a ratio to `import dagster`, both measured in this run.

Each measurement is a fresh interpreter (best of N), so import caches of one do not help the other.
Target: at most 1.5x.
"""

import statistics
import subprocess
import sys
import time

ROUNDS = 7
BASELINE = "import dagster"
SUBJECT = "from hotpot_orchestration.definitions import defs; defs.get_repository_def()"


def best_time(code: str) -> tuple[float, float]:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    best_time(SUBJECT)  # warm the file system cache and .pyc files for both
    base_best, base_median = best_time(BASELINE)
    subject_best, subject_median = best_time(SUBJECT)
    print(f"import dagster:            best {base_best:.3f}s  median {base_median:.3f}s")
    print(f"load hotpot_orchestration: best {subject_best:.3f}s  median {subject_median:.3f}s")
    print(f"ratio (best): {subject_best / base_best:.2f}x")
    print(f"ratio (median): {subject_median / base_median:.2f}x")
    print("target: <= 1.5x")


if __name__ == "__main__":
    main()
