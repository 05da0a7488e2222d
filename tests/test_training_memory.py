"""keep_freed_memory: a large tensor allocated again after being freed reuses the process's pages; paused_gc and
frozen_gc: the collector's state inside and after their blocks, and the training loop runs frozen."""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, sys, torch
from seeyou_ml.training.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(10):  # like training steps: three 64 MB activations, a small tensor that outlives them, all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.empty(16 * 2**20, dtype=torch.float32).fill_(1.0) for _ in range(3)]
    kept = torch.ones(1000)
    del activations
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_freed_memory_is_reused_instead_of_mapped_again():
    default, kept = probe("default"), probe("keep")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert kept["applied"] is False
        return
    assert kept["applied"] is True
    pages = 3 * 64 * 2**20 // 4096
    # By default every step maps (and the kernel zeroes) its pages anew; kept, the heap serves them once it has grown.
    assert min(default["faults"][1:]) > pages // 2
    assert kept["faults"][0] > pages // 2
    # Once the heap has grown to a step's size, steps rarely map new pages.
    assert sum(kept["faults"][3:]) < sum(default["faults"][3:]) / 10


def test_recipe_field_turns_it_on_with_a_log_line(tmp_path, tiny_tokenizer, caplog, monkeypatch):
    import seeyou_ml.training.trainer as trainer_module
    from training_fixtures import make_records, make_trainer, tiny_recipe

    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    with caplog.at_level("INFO", logger="seeyou_ml.training.trainer"):
        make_trainer(tiny_recipe(tmp_path, keep_freed_memory=True), tiny_tokenizer, make_records(8))
    assert calls == [1] and any("keep_freed_memory" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: False)
    with pytest.warns(UserWarning, match="keep_freed_memory needs Linux with glibc"):
        make_trainer(tiny_recipe(tmp_path, keep_freed_memory=True), tiny_tokenizer, make_records(8))
    make_trainer(tiny_recipe(tmp_path), tiny_tokenizer, make_records(8))  # off by default: not called
    assert calls == [1]


def test_paused_gc_turns_the_collector_off_and_back_to_its_state():
    from seeyou_ml.training.memory import paused_gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="inside"):
        with paused_gc():
            assert not gc.isenabled()
            with paused_gc():  # nested: still off after the inner block
                pass
            assert not gc.isenabled()
            raise RuntimeError("inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_frozen_gc_freezes_what_exists_and_unfreezes_it_after(tmp_path, tiny_tokenizer, monkeypatch):
    import seeyou_ml.training.trainer as trainer_module
    from seeyou_ml.training.memory import frozen_gc
    from training_fixtures import make_records, make_trainer, tiny_recipe

    kept = [object() for _ in range(10)]
    with pytest.raises(RuntimeError, match="inside"):
        with frozen_gc():
            assert gc.get_freeze_count() >= len(kept)
            frozen = gc.get_freeze_count()
            with frozen_gc():  # nested: the outer block's objects stay frozen after the inner one
                pass
            assert gc.get_freeze_count() >= frozen
            raise RuntimeError("inside")
    assert gc.get_freeze_count() == 0

    # The trainer's loop runs frozen: each step sees the objects of before the loop frozen.
    trainer = make_trainer(tiny_recipe(tmp_path), tiny_tokenizer, make_records(8))
    counts = []
    step = trainer.optimizer_step
    monkeypatch.setattr(trainer, "optimizer_step", lambda batch: counts.append(gc.get_freeze_count()) or step(batch))
    trainer.train()
    assert counts and min(counts) > 0 and gc.get_freeze_count() == 0
