"""Random-number-generator state, captured into checkpoints and restored on resume, so a run
interrupted and resumed continues exactly as an uninterrupted one (with deterministic ops).

The state is kept in tensors and plain Python values only, so checkpoints holding it still
load with torch.load(weights_only=True)."""
import random

import numpy as np
import torch


def capture_rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generators=("python", "numpy", "torch", "cuda")) -> None:
    if "python" in generators:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in generators:
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "torch" in generators:
        torch.set_rng_state(state["torch"])
    if "cuda" in generators and "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
