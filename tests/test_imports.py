"""Importing fairstamp must have no side effects: no seeding, no environment changes, no heavy
imports for `import fairstamp`, no network."""

import subprocess
import sys

CHECK = r"""
import os, random, sys
import numpy as np
import torch
torch.manual_seed(1234); random.seed(1234); np.random.seed(1234)
env = dict(os.environ)
states = (torch.get_rng_state().clone(), random.getstate(), np.random.get_state()[1].copy())
threads = torch.get_num_threads()
import pkgutil, importlib, fairstamp
names = [m.name for m in pkgutil.walk_packages(fairstamp.__path__, "fairstamp.")]
for name in names:
    importlib.import_module(name)
assert torch.equal(states[0], torch.get_rng_state()), "torch RNG changed"
assert states[1] == random.getstate(), "random changed"
assert (states[2] == np.random.get_state()[1]).all(), "numpy RNG changed"
assert dict(os.environ) == env, "environment changed"
assert torch.get_num_threads() == threads, "thread count changed"
print(len(names))
"""


def test_importing_every_module_changes_nothing():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 10


def test_import_fairstamp_is_light():
    code = ("import sys, fairstamp; "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
