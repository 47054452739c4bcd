"""Import time and peak memory for a 15,000-row Dolly-shaped file.

    python bench/import_speed.py [--rows 15000]

Writes a synthetic Dolly file (instruction, context, response, category; about
the size of databricks-dolly-15k, ~13 MB) as JSONL, CSV and Parquet, then
imports each in a fresh process: read + detect + convert, then save as a
dataset version. Peak memory is that process's maximum resident set size
(VmHWM, or resource.getrusage where /proc is missing), next to the same
figure for a process that only imports the modules. Prints the figures and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ["open_qa", "general_qa", "classification", "closed_qa", "brainstorming", "information_extraction",
              "summarization", "creative_writing"]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there one all we their can has more when will would who so no time people email "
         "letter river music history company").split()

# Peak memory: VmHWM from /proc (Linux), because ru_maxrss survives exec: a
# child started by a big parent would report at least the parent's size.
CHILD = r"""
import json, resource, sys, time, tempfile
sys.path.insert(0, sys.argv[1])
from pathlib import Path

def peak_kb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

from tuner import importers
if sys.argv[3] == "baseline":
    print(json.dumps({"maxrss_kb": peak_kb()}))
    raise SystemExit
t0 = time.perf_counter()
result = importers.import_file(Path(sys.argv[2]))
t1 = time.perf_counter()
path = importers.save_import(result, "bench", Path(tempfile.mkdtemp()))
t2 = time.perf_counter()
print(json.dumps({"rows": len(result.rows), "skipped": len(result.problems), "shape": result.shape,
                  "import_s": round(t1 - t0, 3), "save_s": round(t2 - t1, 3),
                  "maxrss_kb": peak_kb(),
                  "saved_mb": round(path.stat().st_size / 2**20, 2)}))
"""


def text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))).capitalize() + "."


def dolly_rows(n: int, seed: int = 0) -> list[dict]:
    """Lengths near Dolly's: instructions ~12 words, context in ~30% of rows
    (~90 words), responses ~60 words with a long tail."""
    rng = random.Random(seed)
    return [{"instruction": text(rng, 4, 24),
             "context": text(rng, 40, 260) if rng.random() < 0.3 else "",
             "response": text(rng, 5, 160) if rng.random() < 0.9 else text(rng, 160, 500),
             "category": rng.choice(CATEGORIES)} for _ in range(n)]


def write_files(rows: list[dict], folder: Path) -> dict[str, Path]:
    import pandas as pd

    files = {"jsonl": folder / "dolly.jsonl", "csv": folder / "dolly.csv", "parquet": folder / "dolly.parquet"}
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    frame = pd.DataFrame(rows)
    frame.to_csv(files["csv"], index=False)
    frame.to_parquet(files["parquet"], index=False)
    return files


def child(file: Path | None) -> dict:
    args = [sys.executable, "-c", CHILD, str(ROOT), str(file or ""), "baseline" if file is None else "import"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=15_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(dolly_rows(args.rows), Path(tmp))
        baseline = child(None)["maxrss_kb"]
        print(f"Python + tuner.importers alone: peak RSS {baseline / 1024:.0f} MB")
        figures = {"rows": args.rows, "baseline_maxrss_mb": round(baseline / 1024, 1)}
        for kind, path in files.items():
            got = child(path)
            size = path.stat().st_size / 2**20
            print(f"{kind:8s} {size:5.1f} MB: {got['rows']} rows imported ({got['shape']}) in {got['import_s']:.2f} s, "
                  f"saved ({got['saved_mb']} MB) in {got['save_s']:.2f} s; peak RSS {got['maxrss_kb'] / 1024:.0f} MB")
            figures[kind] = {"file_mb": round(size, 2), "import_s": got["import_s"], "save_s": got["save_s"],
                             "maxrss_mb": round(got["maxrss_kb"] / 1024, 1), "rows_imported": got["rows"]}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
