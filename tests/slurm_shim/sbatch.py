"""Fake ``sbatch`` for tests: logs its arguments as a JSON line, runs the job
synchronously (``--wrap`` or a script on stdin, in ``-D``, output to
``--output`` with ``%j``), records the job's final state and prints its id
(as ``sbatch --parsable`` does). State lives in $FAKE_SLURM_DIR."""

import json
import os
import subprocess
import sys
from pathlib import Path

OPTIONS_WITH_VALUES = {"-o": "output", "--output": "output", "-D": "chdir", "--chdir": "chdir"}


def parse(args: list[str], stdin) -> dict[str, str]:
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        key, _, value = arg.partition("=")
        if key == "--wrap":
            found["script"] = value
        elif key in OPTIONS_WITH_VALUES:
            if not value:
                i += 1
                value = args[i]
            found[OPTIONS_WITH_VALUES[key]] = value
        elif arg == "/dev/stdin":
            found["script"] = stdin.read()
        i += 1
    return found


def main() -> int:
    state = Path(os.environ["FAKE_SLURM_DIR"])
    state.mkdir(parents=True, exist_ok=True)
    counter = state / "counter"
    job_id = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(job_id))
    with open(state / "sbatch.jsonl", "a") as log:
        log.write(json.dumps(sys.argv[1:]) + "\n")
    job = parse(sys.argv[1:], sys.stdin)
    output = job.get("output", os.devnull).replace("%j", str(job_id))
    env = dict(os.environ, SLURM_JOB_ID=str(job_id), SLURM_JOBID=str(job_id))
    with open(output, "w") as out:
        code = subprocess.call(["bash", "-c", job["script"]], cwd=job.get("chdir"),
                               stdout=out, stderr=subprocess.STDOUT, env=env)
    (state / f"{job_id}.state").write_text("COMPLETED" if code == 0 else "FAILED")
    print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
