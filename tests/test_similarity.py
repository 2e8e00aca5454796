"""`python -m experiments.similarity`: the converted MiniLM ranks paraphrases above unrelated text."""

import subprocess
import sys


def test_demo_prints_sensible_similarities():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.similarity"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.strip().startswith("[")]
    sims = [[float(x) for x in row.split("]")[1].split()[:5]] for row in rows]
    assert len(sims) == 5
    assert sims[0][1] > 0.5 and sims[2][3] > 0.5  # paraphrase pairs
    assert max(sims[0][2], sims[0][3], sims[1][4]) < 0.3  # unrelated pairs
