"""Finding checkpoints, reading their steps, loading them safely, and clear errors for bad ones."""

import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import slt
from slt.sweeps.checkpoints import (
    CheckpointError,
    UnsafeCheckpointWarning,
    build_model,
    load_state_dict,
    resolve_checkpoints,
    step_from_name,
)
from tests.sweeps.fixtures import make_model, make_wide_model


def _state(model=None):
    torch.manual_seed(0)
    return (model or make_model()).state_dict()


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("step_000120.pt", 120),
        ("epoch=3-step=1200.ckpt", 1200),
        ("ckpt-7.safetensors", 7),
        ("model_v2_step100.pth", 100),
        ("final.pt", None),
        # an explicit marker wins over other numbers; decimals are never steps
        ("epoch=0-step=18-val_loss=0.52.ckpt", 18),
        ("model_step1000_seed42.pt", 1000),
        ("ckpt-step-300.pt", 300),
        ("global_step=40.ckpt", 40),
        ("lr1e-3_step5.pt", 5),
        ("ckpt_0.25.pt", None),
    ],
)
def test_step_comes_from_the_step_marker_or_the_only_whole_number(name, step):
    assert step_from_name(name) == step


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("0-18-0.52.ckpt", r"several numbers \(0, 18\) and no step marker.*\(step, path\) pairs"),
        ("run2-ckpt100.pt", r"several numbers \(2, 100\)"),
        ("step=1-step=2.pt", r"several step markers \(1, 2\); pass \(step, path\) pairs"),
    ],
)
def test_ambiguous_file_names_are_refused(name, message):
    with pytest.raises(CheckpointError, match=message):
        step_from_name(name)


def test_lightning_names_sort_by_step_not_by_loss(tmp_path):
    state = _state()
    names = {
        18: "epoch=0-step=18-val_loss=0.91.ckpt",
        31: "epoch=1-step=31-val_loss=0.47.ckpt",
        47: "epoch=2-step=47-val_loss=0.52.ckpt",
        52: "epoch=3-step=52-val_loss=0.18.ckpt",
    }
    for name in names.values():
        torch.save({"state_dict": state}, tmp_path / name)
    torch.save(state, tmp_path / "model_step1000_seed42.pt")
    found = resolve_checkpoints(tmp_path)
    assert [(c.step, Path(c.source).name) for c in found] == [
        *sorted(names.items()),
        (1000, "model_step1000_seed42.pt"),
    ]


def test_a_folder_with_glob_characters_in_its_name_is_a_folder(tmp_path):
    folder = tmp_path / "run[seed=1]"
    folder.mkdir()
    (tmp_path / "runs").mkdir()  # what "run[seed=1]" matches as a glob; must not be read
    torch.save(_state(), tmp_path / "runs" / "step_9.pt")
    for step in (0, 5):
        torch.save(_state(), folder / f"step_{step}.pt")
    assert [c.step for c in resolve_checkpoints(folder)] == [0, 5]
    assert [c.step for c in resolve_checkpoints(str(folder / "step_*.pt"))] == [0, 5]


def test_folder_glob_files_pairs_and_state_dicts_resolve_sorted_by_step(tmp_path):
    state = _state()
    for step in (30, 2, 10):
        torch.save(state, tmp_path / f"step_{step}.pt")
    save_file(dict(state), str(tmp_path / "step_5.safetensors"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")

    from_folder = resolve_checkpoints(tmp_path)
    assert [c.step for c in from_folder] == [2, 5, 10, 30]
    assert all(c.path is not None and c.path.suffix in (".pt", ".safetensors") for c in from_folder)

    from_glob = resolve_checkpoints(str(tmp_path / "step_*.pt"))
    assert [c.step for c in from_glob] == [2, 10, 30]

    pairs = resolve_checkpoints([(100, tmp_path / "step_2.pt"), (50, tmp_path / "step_30.pt")])
    assert [(c.step, c.path.name) for c in pairs] == [(50, "step_30.pt"), (100, "step_2.pt")]

    in_memory = resolve_checkpoints([state, state])
    assert [c.step for c in in_memory] == [0, 1] and in_memory[0].state_dict is state
    as_dict = resolve_checkpoints({7: state, 3: tmp_path / "step_10.pt"})
    assert [c.step for c in as_dict] == [3, 7]


def test_bad_descriptions_fail_with_clear_messages(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve_checkpoints(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="holds no checkpoint files"):
        resolve_checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match="no files match"):
        resolve_checkpoints(str(tmp_path / "*.pt"))
    torch.save(_state(), tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match=r"cannot read a training step.*\(step, path\) pairs"):
        resolve_checkpoints(tmp_path)
    torch.save(_state(), tmp_path / "a_1.pt")
    torch.save(_state(), tmp_path / "b_1.pt")
    with pytest.raises(CheckpointError, match="two checkpoints share step 1"):
        resolve_checkpoints([tmp_path / "a_1.pt", tmp_path / "b_1.pt"])
    with pytest.raises(CheckpointError, match="single state dict"):
        resolve_checkpoints(_state())


def test_safetensors_and_torch_files_load_the_same_weights(tmp_path):
    state = _state()
    torch.save(state, tmp_path / "a.pt")
    save_file(dict(state), str(tmp_path / "a.safetensors"))
    torch.save({"model": state, "optimizer": {"lr": 0.1}, "step": 3}, tmp_path / "nested.pt")
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "lightning.ckpt")
    torch.save({"weights_here": state, "step": 3}, tmp_path / "custom.pt")
    for name in ("a.pt", "a.safetensors", "nested.pt", "lightning.ckpt"):
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    with pytest.raises(CheckpointError, match="state_dict_key="):
        load_state_dict(tmp_path / "custom.pt")
    loaded = load_state_dict(tmp_path / "custom.pt", state_dict_key="weights_here")
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_corrupt_and_truncated_files_are_reported_as_such(tmp_path):
    torch.save(_state(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all" * 10)
    (tmp_path / "garbage.safetensors").write_bytes(b"junk" * 10)
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("truncated.pt", "garbage.pt", "empty.pth"):
        with pytest.raises(CheckpointError, match=r"could not read .*corrupt"):
            load_state_dict(tmp_path / name)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_state_dict(tmp_path / "garbage.safetensors")


def test_pickled_objects_need_the_explicit_opt_in_and_warn(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    torch.save(model, tmp_path / "whole_model.pt")
    with pytest.raises(CheckpointError, match=r"allow_pickle=True") as info:
        load_state_dict(tmp_path / "whole_model.pt")
    assert "arbitrary code" in str(info.value) and "Sequential" in str(info.value)
    with pytest.warns(UnsafeCheckpointWarning, match="allow_pickle=True"):
        loaded = load_state_dict(tmp_path / "whole_model.pt", allow_pickle=True)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_build_model_names_every_mismatch(tmp_path):
    torch.manual_seed(0)
    wide = make_wide_model().state_dict()
    with pytest.raises(CheckpointError) as info:
        build_model(make_model, wide, "wide.pt")
    text = str(info.value)
    assert "wide.pt does not fit the model built by model_factory" in text
    assert "size mismatch for 0.weight: checkpoint (16, 3) vs model (8, 3)" in text
    assert "2.weight: checkpoint (1, 16) vs model (1, 8)" in text
    partial = dict(_state())
    partial.pop("2.bias")
    partial["extra.weight"] = torch.zeros(2)
    with pytest.raises(
        CheckpointError, match=r"missing keys \['2.bias'\].*unexpected keys \['extra.weight'\]"
    ):
        build_model(make_model, partial, "partial.pt")
    with pytest.raises(TypeError, match=r"must return a torch\.nn\.Module"):
        build_model(lambda: "not a model", _state(), "x")
    diverged = dict(_state())
    diverged["0.weight"] = diverged["0.weight"].clone()
    diverged["0.weight"][0, :2] = float("nan")
    diverged["2.bias"] = torch.full_like(diverged["2.bias"], float("inf"))
    with pytest.raises(
        CheckpointError, match=r"nan.pt holds non-finite weights .* in 0\.weight \(2 of 24 values\), 2\.bias"
    ):
        build_model(make_model, diverged, "nan.pt")
    model = build_model(make_model, _state(), "good")
    assert isinstance(model, nn.Module)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in _state().items())


def test_identity_changes_with_the_file_and_hashes_memory(tmp_path):
    path = tmp_path / "step_1.pt"
    torch.save(_state(), path)
    (record,) = resolve_checkpoints(path)
    first, content = record.identity(), record.identity("content")
    assert record.identity() == first and "size=" in first
    later = time.time() + 5
    os.utime(path, (later, later))
    assert record.identity() != first  # modification time is part of the stat identity
    assert record.identity("content") == content  # the bytes did not change
    (in_memory,) = resolve_checkpoints([_state()])
    changed = dict(_state())
    changed["0.bias"] = changed["0.bias"] + 1
    (other,) = resolve_checkpoints([changed])
    assert in_memory.identity() != other.identity()
    with pytest.raises(ValueError, match='"stat" or "content"'):
        record.identity("mtime")


def test_public_names_are_exported():
    assert slt.resolve_checkpoints is resolve_checkpoints and slt.load_state_dict is load_state_dict
    assert issubclass(slt.CheckpointError, ValueError)
