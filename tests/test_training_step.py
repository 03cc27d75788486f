"""`training_step` under fp16 loss scaling: the CLUB critics' steps (the first, with the main
step, and the `club_critic_steps - 1` extra ones) train as unscaled ones do."""

import contextlib

import pytest
import torch
from accelerate import Accelerator

from factorcl_hf.objectives import train_club_critics
from factorcl_hf.research.encoders import VectorFactorCL
from factorcl_hf.training_step import parameter_groups, training_step


class LossScalingAccelerator(Accelerator):
    """accelerate's fp16 loss scaling on the CPU (accelerate builds its GradScaler for GPUs
    only): the loss scaled by a real ``torch.amp.GradScaler``, gradients unscaled by
    ``clip_grad_norm_`` (every prepared optimizer's) and by each prepared optimizer's step,
    followed by the scaler's ``update()``. The compute stays in float32: scaling by a power
    of two is exact, so a correct step equals the unscaled one to float rounding."""

    mixed_precision = "fp16"

    def __init__(self, scale: float):
        super().__init__(cpu=True)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=scale)

    def prepare(self, *objects):
        prepared = super().prepare(*objects)
        # From here on as under fp16 on a GPU (set after `prepare`: no autocast wrapper, which
        # on the CPU would compute in bfloat16).
        self.native_amp = True
        return prepared

    def autocast(self, autocast_handler=None):
        return contextlib.nullcontext()


def _critic_run(steps: int, accelerator=None, batches: int = 3):
    torch.manual_seed(0)
    model = VectorFactorCL((6, 6), "factorcl_sup", hidden_dim=16, embed_dim=8, num_layers=1, num_labels=2, head_dim=4,
                           head_hidden_dim=8, critic_hidden_dim=8, estimators="tracked")
    # SGD: the step is the gradient itself (Adam's would hide most of a wrong gradient scale).
    optimizer = torch.optim.SGD(parameter_groups(model, 0.05), lr=0.05)
    critic_optimizer = torch.optim.SGD(model.club_critic_parameters(), lr=1.0)
    data = torch.Generator().manual_seed(1)
    inputs = [dict(x1=torch.randn(8, 6, generator=data), x2=torch.randn(8, 6, generator=data),
                   labels=torch.randint(0, 2, (8,), generator=data)) for _ in range(batches)]
    stepped = model
    if accelerator is not None:
        stepped, optimizer, critic_optimizer = accelerator.prepare(model, optimizer, critic_optimizer)
    for batch in inputs:
        training_step(stepped, batch, optimizer, critic_optimizer, club_critic_steps=steps, max_grad_norm=1.0,
                      accelerator=accelerator)
    return model


@pytest.mark.parametrize("steps", [1, 3])
def test_club_critic_steps_under_fp16_loss_scaling_equal_unscaled_ones(steps):
    """With a loss scale of 2**10, the CLUB critics (stepped once with the main step, then
    ``steps - 1`` times on the same features) and every other parameter end where the
    unscaled float32 run's do. (The critics once stepped on gradients divided by the scale:
    unscaled twice, by the clipping and by their own step, and the extra steps' gradients,
    never scaled, unscaled all the same.)"""
    reference = _critic_run(steps)
    scaled = _critic_run(steps, LossScalingAccelerator(2.0**10))
    for (name, want), got in zip(reference.named_parameters(), scaled.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    initial = _critic_run(steps, batches=0)
    assert max((a - b).abs().max().item() for a, b in zip(initial.club_critic_parameters(),
                                                         scaled.club_critic_parameters())) > 1e-3, "critics trained"


def test_a_critic_step_whose_scaled_gradients_overflow_is_skipped():
    torch.manual_seed(0)
    model = VectorFactorCL((6, 6), "factorcl_sup", hidden_dim=16, embed_dim=8, num_layers=1, num_labels=2, head_dim=4,
                           head_hidden_dim=8, critic_hidden_dim=8, estimators="tracked")
    out = model(torch.randn(8, 6), torch.randn(8, 6), labels=torch.arange(8) % 2)
    optimizer = torch.optim.SGD(model.club_critic_parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.club_critic_parameters()]
    assert len(train_club_critics(model.objective, out.critic_inputs, optimizer, 2, loss_scale=float("inf"))) == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.club_critic_parameters())), "an overflow stepped"
    train_club_critics(model.objective, out.critic_inputs, optimizer, 1, loss_scale=2.0**10)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.club_critic_parameters()))
