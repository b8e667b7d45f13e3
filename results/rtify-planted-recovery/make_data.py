"""Write the three planted-DDM trial files of PREREGISTRATION.md (columns split, condition, rt_s, correct)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from perceptalign.rtify.ddm import DDM, DDMConfig

COHERENCES = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2]
N_TRAIN, N_TEST = 5000, 1500
PLANTED = {
    "constant_sv": (DDMConfig(drift_variability=True), {"k": 0.10, "sv": 1.2, "B": 0.8, "t0": 0.3}),
    "collapsing": (DDMConfig(bound="collapsing"), {"k": 0.06, "B": 1.2, "tau_B": 0.8, "t0": 0.3}),
    "collapsing_sv": (
        DDMConfig(bound="collapsing", drift_variability=True),
        {"k": 0.10, "sv": 1.0, "B": 1.0, "tau_B": 1.0, "t0": 0.3},
    ),
}


def planted_trials(name: str) -> pd.DataFrame:
    config, params = PLANTED[name]
    model = DDM.from_params(params, config)
    parts = []
    for split, n, seed in (("train", N_TRAIN, 1), ("test", N_TEST, 2)):
        table = model.simulate(COHERENCES, n, seed=seed)
        parts.append(table[table["decided"]].drop(columns="decided").assign(split=split))
    return pd.concat(parts, ignore_index=True)[["split", "condition", "rt_s", "correct"]]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for name in PLANTED:
        planted_trials(name).to_csv(out / f"{name}.csv", index=False)
