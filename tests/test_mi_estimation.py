"""The Gaussian MI demo (examples/mi_estimation.py) and the critic benchmark's naive reference."""

import importlib.util
import json
import math
import os

import pytest
import torch

from benchmarks import critic_speed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(relative_path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mi_estimation = _load("examples/mi_estimation.py", "mi_estimation")


def _gaussian_mi_from_covariance(x: torch.Tensor, y: torch.Tensor) -> float:
    """``I = ½ (log|Σx| + log|Σy| − log|Σxy|)`` from sample covariances (independent of ρ's formula)."""
    joint = torch.cat([x, y], dim=1).double()
    cov = torch.cov(joint.T)
    d = x.shape[1]
    return 0.5 * (torch.logdet(cov[:d, :d]) + torch.logdet(cov[d:, d:]) - torch.logdet(cov)).item()


@pytest.mark.parametrize("true_mi", [1.0, 6.0])
def test_samples_carry_the_requested_mutual_information(true_mi):
    dim = 5
    rho = mi_estimation.correlation_for_mi(true_mi, dim)
    x, y = mi_estimation.sample_correlated_gaussians(200_000, dim, rho, torch.Generator().manual_seed(0))
    assert x.std().item() == pytest.approx(1.0, abs=0.01) and y.std().item() == pytest.approx(1.0, abs=0.01)
    assert _gaussian_mi_from_covariance(x, y) == pytest.approx(true_mi, rel=0.02)


@pytest.mark.parametrize("true_mi", [1.0, 4.0])
def test_club_of_optimal_critic_matches_monte_carlo(true_mi):
    dim = 3
    rho = mi_estimation.correlation_for_mi(true_mi, dim)
    x, y = mi_estimation.sample_correlated_gaussians(1500, dim, rho, torch.Generator().manual_seed(0))
    x, y = x.double(), y.double()
    # log p(y|x)/p(y) for every pair, summed over coordinates.
    residual = y.unsqueeze(0) - rho * x.unsqueeze(1)  # [i, j, k] = y_jk - rho x_ik
    log_ratio = (-0.5 * math.log(1 - rho**2) - residual**2 / (2 * (1 - rho**2)) + y.unsqueeze(0) ** 2 / 2).sum(-1)
    monte_carlo = (log_ratio.diagonal().mean() - log_ratio.mean()).item()
    assert monte_carlo == pytest.approx(mi_estimation.club_of_optimal_critic(true_mi, dim), rel=0.1)


@pytest.fixture(scope="module")
def small_estimates():
    kwargs = dict(dim=5, steps=200, batch_size=64, hidden_dim=64, lr=5e-3, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread on a busy machine only adds waiting
    try:
        return {mi: mi_estimation.estimate_mi(mi, **kwargs) for mi in (1.0, 4.0)}
    finally:
        torch.set_num_threads(threads)


def test_infonce_grows_with_mi_and_respects_its_ceilings(small_estimates):
    low, high = small_estimates[1.0], small_estimates[4.0]
    assert high["infonce"] > low["infonce"] + 1.0
    for true_mi, result in small_estimates.items():
        assert result["log_batch"] == pytest.approx(math.log(64))
        assert result["infonce"] <= min(true_mi, result["log_batch"]) + 0.3
        assert result["infonce"] > 0.5 * min(true_mi, result["log_batch"])  # it did learn


def test_nce_club_lies_above_infonce(small_estimates):
    for result in small_estimates.values():
        assert result["nce_club"] >= result["infonce"]


def test_estimate_mi_rejects_bad_arguments():
    with pytest.raises(ValueError, match="true_mi"):
        mi_estimation.estimate_mi(0.0, dim=2, steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        mi_estimation.estimate_mi(1.0, dim=2, steps=1, batch_size=1)


def test_cli_writes_json_and_png(tmp_path):
    from PIL import Image

    out = tmp_path / "mi"
    argv = ["--dim", "3", "--steps", "8", "--batch-size", "16", "--hidden-dim", "16", "--true-mi", "1", "2", "--out", str(out)]
    mi_estimation.main(argv)  # it sets the process-wide thread count; conftest's one_thread restores it
    results = json.loads((out / "mi_estimates.json").read_text())
    assert [r["true_mi"] for r in results] == [1.0, 2.0]
    for r in results:
        assert {"true_mi", "infonce", "nce_club", "log_batch"} <= set(r)
        assert r["log_batch"] == pytest.approx(math.log(16))
    with Image.open(out / "mi_estimates.png") as image:
        assert image.format == "PNG" and image.width > 100


@pytest.mark.parametrize("num_hidden_layers", [1, 2])
def test_benchmark_naive_reference_matches_concat_critic(num_hidden_layers):
    """Scores and every gradient agree, so the benchmark compares the same function."""
    critic, x, y = critic_speed.build_case(
        batch_size=6, num_hidden_layers=num_hidden_layers, hidden_dim=16, feature_dim=7, seed=1
    )
    y = y[:5].detach().requires_grad_(True)  # rectangular, to catch a transposed or mis-tiled reference
    naive = critic_speed.NaiveConcatCritic(critic)
    ours_scores, naive_scores = critic(x, y), naive(x, y)
    expected = torch.stack([torch.stack([critic.score_pairs(xi[None], yj[None])[0] for yj in y]) for xi in x])
    torch.testing.assert_close(naive_scores, expected)
    torch.testing.assert_close(ours_scores, naive_scores)

    weights = torch.randn(6, 5)
    ours_params = [critic.x_proj.weight, critic.y_proj.weight, critic.x_proj.bias]
    ours_grads = torch.autograd.grad((ours_scores * weights).sum(), [x, y, *ours_params])
    naive_first = naive.mlp[0]
    naive_grads = torch.autograd.grad((naive_scores * weights).sum(), [x, y, naive_first.weight, naive_first.bias])
    torch.testing.assert_close(ours_grads[0], naive_grads[0])
    torch.testing.assert_close(ours_grads[1], naive_grads[1])
    torch.testing.assert_close(torch.cat([ours_grads[2], ours_grads[3]], dim=1), naive_grads[2])
    torch.testing.assert_close(ours_grads[4], naive_grads[3])


def test_benchmark_refuses_to_time_a_reference_that_computes_something_else(monkeypatch):
    original_forward = critic_speed.NaiveConcatCritic.forward
    monkeypatch.setattr(critic_speed.NaiveConcatCritic, "forward", lambda self, x, y: original_forward(self, x, y).T)
    with pytest.raises(RuntimeError, match="not the same function"):
        critic_speed.benchmark_case(4, 1, chunk_size=None, repeats=1, input_grad=True, device="cpu")
