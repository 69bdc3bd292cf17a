"""A sampler and a measure defined in one module (tests/toy_plugins.py) work everywhere once registered."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import slt
from slt.samplers import get_kernel, kernel_names
from slt.sweeps.measures import MEASURES
from tests.conftest import Quadratic, quadratic_loss
from tests.sweeps.fixtures import TINY, gaussian_nll, make_model, regression_data, train_and_save
from tests.toy_plugins import STEPS_TAKEN, TOY_KERNEL, TOY_MEASURE

pytestmark = pytest.mark.filterwarnings("ignore::slt.warnings.SLTWarning")

QUAD = dict(loss_fn=quadratic_loss, n_beta=100.0, step_size=1e-3, num_chains=2, progress=False)


def steps_during(fn):
    before = STEPS_TAKEN[0]
    out = fn()
    return out, STEPS_TAKEN[0] - before


def test_registering_makes_the_name_known():
    assert "toy_sgld" in kernel_names() and get_kernel("toy_sgld") is TOY_KERNEL
    assert dict(TOY_KERNEL.options) == {"noise_scale": 1.0}
    assert MEASURES["param_norm"] is TOY_MEASURE


def test_estimate_llc_runs_the_toy_kernel_and_records_its_options():
    data = torch.zeros(8, 1)
    result, steps = steps_during(
        lambda: slt.estimate_llc(
            Quadratic(4), data, sampler="toy_sgld", num_draws=300, num_burnin=300, seed=1, **QUAD
        )
    )
    assert steps == 2 * 600
    assert result.settings.sampler == "toy_sgld" and result.settings.sampler_options == {"noise_scale": 1.0}
    # the toy kernel is SGLD: on ||w||^2 with nβ = 100, γ = 1 the exact value is (d/2)·2nβ/(2nβ+γ)/(1-εa/4)
    a = 2 * 100.0 + 1.0
    assert result.mean == pytest.approx(2 * 200 / a / (1 - 1e-3 * a / 4), rel=0.15)
    # its option is bound: half the noise, a quarter of the spread
    quiet = slt.estimate_llc(
        Quadratic(4),
        data,
        sampler="toy_sgld",
        sampler_options={"noise_scale": 0.5},
        num_draws=300,
        num_burnin=300,
        seed=1,
        **QUAD,
    )
    assert quiet.mean == pytest.approx(result.mean / 4, rel=0.25)
    with pytest.raises(ValueError, match="sampler 'toy_sgld' has no option 'noise'.*noise_scale=1.0"):
        slt.estimate_llc(Quadratic(4), data, sampler="toy_sgld", sampler_options={"noise": 0.5}, **QUAD)


def test_calibrate_and_estimate_dos_run_the_toy_kernel():
    data = torch.zeros(8, 1)
    cal, steps = steps_during(
        lambda: slt.calibrate(
            Quadratic(4),
            data,
            loss_fn=quadratic_loss,
            n_beta=100.0,
            sampler="toy_sgld",
            step_sizes=[2e-3, 1e-3],
            num_chains=2,
            base_steps=200,
            max_steps=400,
            progress=False,
        )
    )
    assert steps > 0 and cal.settings["sampler"] == "toy_sgld"
    assert cal.estimate_kwargs()["sampler"] == "toy_sgld"
    dos, steps = steps_during(
        lambda: slt.estimate_dos(
            Quadratic(2),
            data,
            loss_fn=quadratic_loss,
            sampler="toy_sgld",
            step_size=1e-4,
            num_rungs=3,
            num_chains=2,
            num_draws=50,
            num_burnin=20,
            num_bootstrap=0,
            progress=False,
        )
    )
    assert steps == 3 * 2 * 70 and dos.settings.sampler == "toy_sgld"


def test_sweeps_and_the_monitor_take_the_toy_kernel_and_the_toy_measure(tmp_path):
    train_and_save(tmp_path / "ckpts", count=3)
    settings = {**TINY, "sampler": "toy_sgld", "sampler_options": {"noise_scale": 0.5}}
    trajectory, steps = steps_during(
        lambda: slt.analyze_checkpoints(
            tmp_path / "ckpts",
            make_model,
            regression_data(),
            loss_fn=gaussian_nll,
            measures=("llc", "param_norm"),
            measure_settings={"param_norm": {"scale": 2.0}},
            store=tmp_path / "s.sqlite",
            progress=False,
            **settings,
        )
    )
    assert trajectory.ok.all(), trajectory.failures
    assert steps == 3 * 2 * (TINY["num_burnin"] + TINY["num_draws"])
    assert all(r.settings.sampler == "toy_sgld" for r in trajectory.llc)
    norms = trajectory.results("param_norm")
    np.testing.assert_allclose(trajectory.column("param_norm"), 2.0 * np.array(norms))
    model = make_model()
    model.load_state_dict(torch.load(tmp_path / "ckpts" / "step_00010.pt", weights_only=True))
    expected = torch.cat([p.detach().flatten() for p in model.parameters()]).norm().item()
    assert norms[2] == pytest.approx(expected, rel=1e-6)
    reloaded = slt.Trajectory.load(tmp_path / "s.sqlite")
    assert reloaded.results("param_norm") == norms
    with pytest.raises(ValueError, match="scale must be positive"):
        slt.analyze_checkpoints(
            tmp_path / "ckpts",
            make_model,
            regression_data(),
            loss_fn=gaussian_nll,
            measures=("param_norm",),
            measure_settings={"param_norm": {"scale": -1}},
            store=None,
        )

    monitor = slt.LLCMonitor(
        regression_data(), loss_fn=gaussian_nll, every=2, measures=("llc", "param_norm"), **settings
    )
    model = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(3):
            monitor(model, step)
    assert list(monitor.trajectory.steps) == [0, 2]
    assert monitor.trajectory.results("param_norm")[0] == pytest.approx(
        torch.cat([p.detach().flatten() for p in model.parameters()]).norm().item()
    )


def test_the_command_line_takes_the_toy_kernel_and_measure(tmp_path):
    train_and_save(tmp_path / "ckpts", count=2)
    args = [
        "--num-chains",
        "2",
        "--num-draws",
        "20",
        "--num-burnin",
        "5",
        "--step-size",
        "1e-4",
        "--batch-size",
        "32",
        "--threads",
        "1",
        "--no-progress",
    ]

    def analyze(sampler, out):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "slt",
                "analyze",
                str(tmp_path / "ckpts"),
                "--model",
                "tests.toy_plugins:make_model",
                "--data",
                "tests.toy_plugins:regression_data",
                "--loss",
                "mse",
                "--sampler",
                sampler,
                "--measures",
                "llc,param_norm",
                "--out",
                str(tmp_path / out),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = analyze("toy_sgld", "cli.sqlite")
    assert done.returncode == 0, done.stderr
    trajectory = slt.Trajectory.load(tmp_path / "cli.sqlite")
    assert trajectory.ok.all() and len(trajectory) == 2
    assert trajectory.llc[0].settings.sampler == "toy_sgld"
    assert np.isfinite(trajectory.column("param_norm")).all()
    bad = analyze("no_such_kernel", "bad.sqlite")
    assert bad.returncode == 2 and "unknown sampler 'no_such_kernel'" in bad.stderr
