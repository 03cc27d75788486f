"""Two CPU processes (gloo): the gathered objective gives exactly the gradients of the
global batch, as one process would compute them."""

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from factorcl_hf.distributed import gather_features
from factorcl_hf.objectives import build_objective

B, D = 8, 6
KWARGS = dict(num_labels=3, head_dim=4, head_hidden_dim=8, critic_hidden_dim=8, alignment_critic_type="concat")


def batch():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    return dict(features_1=f1, features_2=f2, labels=torch.randint(0, 3, (B,), generator=g),
                augmented_1=f1 + 0.1 * torch.randn(B, D, generator=g), augmented_2=f2 + 0.1 * torch.randn(B, D, generator=g))


def grads(name, rank=0, world=1):
    torch.manual_seed(0)
    objective = build_objective(name, (D, D), **KWARGS)
    full = batch()
    local = {k: v.chunk(world)[rank].clone().requires_grad_(v.is_floating_point()) for k, v in full.items()}
    out = objective(**local)
    (out.loss + out.critic_loss if out.critic_loss is not None else out.loss).backward()
    param_grads = [p.grad.clone() for p in objective.parameters()]
    if world > 1:
        for g in param_grads:  # what DDP does: average over processes
            dist.all_reduce(g)
            g /= world
    return out.loss.detach(), param_grads, local["features_1"].grad


NAMES = ["factorcl_sup", "factorcl_ssl", "simclr"]


def worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    # The gather uses torch's current collective, not a deprecated alias (its FutureWarning is noise).
    warnings.filterwarnings("error", message=".*is deprecated", category=FutureWarning)
    # Plain tensors (collective results are lazily-waited tensor subclasses).
    plain = lambda t: torch.from_numpy(t.detach().numpy().copy())  # noqa: E731
    try:
        results = {}
        for name in NAMES:
            loss, param_grads, feature_grad = grads(name, rank, world)
            gathered = gather_features([feature_grad])[0]
            results[name] = {"loss": plain(loss), "params": [plain(g) for g in param_grads], "features": plain(gathered)}
        if rank == 0:
            torch.save(results, result_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(2, str(tmp / "init"), str(tmp / "result.pt")), nprocs=2, join=True)
    return torch.load(tmp / "result.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_two_process_gradients_equal_global_batch(name, two_process_results):
    got = two_process_results[name]
    loss, param_grads, feature_grad = grads(name)
    torch.testing.assert_close(got["loss"], loss)
    for a, b in zip(got["params"], param_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # DDP averages parameter gradients, so each process's inputs get `world` times their
    # share of the global loss's gradient; their average over processes is exact.
    torch.testing.assert_close(got["features"] / 2, feature_grad, rtol=1e-5, atol=1e-6)


def test_single_process_gather_is_identity():
    t = torch.randn(3, 2)
    assert gather_features([t, None])[0] is t
