"""The child process of `run_isolated`: `python -m sdcpp.evaluation._child JOB.pkl OUT.pkl` (a module of its own, so
that running it does not re-import a module the package already holds)."""

from __future__ import annotations

import os
import pickle
import sys

from sdcpp.evaluation.run import run_job


def main(job_path: str, out_path: str) -> int:
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    try:
        result = run_job(job)
    except Exception as e:  # handed to the parent, which raises it as if it had run the job itself
        result = e
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:  # an exception type whose constructor pickle cannot replay
            result = RuntimeError(f"{type(e).__name__}: {e}")
    tmp = out_path + ".partial"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
