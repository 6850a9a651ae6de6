"""DMD on one tiny base UNet with two LoRA adapters (student = generator, fake = fake score)."""

import pytest
import torch

from hypersd_core.parameterization import DiscreteVPDenoiser
from hypersd_core.samplers import get_sigmas_onestep, sample_dmd_onestep
from hypersd_core.schedule import VPSchedule
from train.sampling import GuidedUNet
from train.stages.adapters import adapter_parameters, add_zero_adapter, use_adapter
from train.stages.dmd import (
    DMDOptions,
    build_reference_bank,
    distribution_matching,
    fake_score_loss,
    generate_onestep,
    regression_loss,
)

SCHED = VPSchedule.scaled_linear()


def _grads(unet):
    return {n for n, p in unet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("timestep", [999, 800])
def test_generator_equals_onestep_sampler(tiny_unet, embeddings, timestep):
    cond, _ = embeddings
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = generate_onestep(tiny_unet, z, cond, SCHED, timestep)
        sigmas = get_sigmas_onestep(timestep, SCHED)
        ref = sample_dmd_onestep(
            DiscreteVPDenoiser(GuidedUNet(tiny_unet, cond), SCHED), z * (sigmas[0] ** 2 + 1).sqrt(), sigmas
        )
    torch.testing.assert_close(x, ref, rtol=1e-4, atol=1e-5)


def test_fake_adapter_starts_as_teacher_and_switching_keeps_trainable_sets(tiny_unet, embeddings):
    cond, _ = embeddings
    fake = add_zero_adapter(tiny_unet, "fake", like="student")
    assert tiny_unet.active_adapters() == ["student"]
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([300, 700])
    with torch.no_grad():
        use_adapter(tiny_unet, None)
        teacher = tiny_unet(x_t, t, encoder_hidden_states=cond).sample
        use_adapter(tiny_unet, "fake")
        fake_out = tiny_unet(x_t, t, encoder_hidden_states=cond).sample
        use_adapter(tiny_unet, "student")
        student = tiny_unet(x_t, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(fake_out, teacher)
    assert not torch.allclose(student, teacher)
    use_adapter(tiny_unet, "fake", fake)
    assert all(p.requires_grad for p in fake)
    assert not any(p.requires_grad for p in adapter_parameters(tiny_unet, "student"))


def test_dm_gradient_reaches_only_the_generator(tiny_unet, embeddings):
    cond, uncond = embeddings
    fake = add_zero_adapter(tiny_unet, "fake", like="student")
    with torch.no_grad():
        for p in fake:
            p.normal_(0, 0.05)  # a fake score that differs from the teacher
    student = adapter_parameters(tiny_unet, "student")
    use_adapter(tiny_unet, "student", student)
    opts = DMDOptions(real_cfg=2.0)
    x = generate_onestep(tiny_unet, torch.randn(2, 1, 8, 8), cond, SCHED)
    loss = distribution_matching(
        tiny_unet, x, cond, uncond, opts, SCHED, "student", generator=torch.Generator().manual_seed(0)
    )
    (loss + regression_loss(x, torch.zeros_like(x))).backward()
    got = _grads(tiny_unet)
    assert got and all(".student." in n for n in got)
    assert all(p.requires_grad for p in student) and not any(p.requires_grad for p in fake)


def test_dm_gradient_vanishes_when_fake_equals_real(tiny_unet, embeddings):
    """mu_fake == mu_real (fake = untrained copy of the teacher, no CFG): nothing to match."""
    cond, uncond = embeddings
    add_zero_adapter(tiny_unet, "fake", like="student")
    student = adapter_parameters(tiny_unet, "student")
    use_adapter(tiny_unet, "student", student)
    x = generate_onestep(tiny_unet, torch.randn(2, 1, 8, 8), cond, SCHED)
    loss = distribution_matching(tiny_unet, x, cond, uncond, DMDOptions(real_cfg=1.0), SCHED, "student")
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in student)


def test_fake_updates_train_only_the_fake_adapter(tiny_unet, embeddings):
    cond, _ = embeddings
    fake = add_zero_adapter(tiny_unet, "fake", like="student")
    with torch.no_grad():
        x = generate_onestep(tiny_unet, torch.randn(2, 1, 8, 8), cond, SCHED)
    use_adapter(tiny_unet, "fake", fake)
    opt = torch.optim.Adam(fake, lr=1e-2)

    def held_out():  # the same t and eps every time
        with torch.no_grad():
            return fake_score_loss(
                tiny_unet, x, cond, DMDOptions(), SCHED, generator=torch.Generator().manual_seed(9)
            ).item()

    before = held_out()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        loss = fake_score_loss(tiny_unet, x, cond, DMDOptions(), SCHED, generator=g)
        opt.zero_grad()
        loss.backward()
        assert all(".fake." in n for n in _grads(tiny_unet))
        opt.step()
    assert held_out() < before


def test_reference_bank_is_the_teacher(tiny_unet, embeddings):
    cond, uncond = embeddings
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    from train.sampling import sample_images

    use_adapter(tiny_unet, None)
    bank = build_reference_bank(tiny_unet, z, cond, uncond, steps=3, cfg=2.0, schedule=SCHED, chunk=1)
    ref = sample_images(tiny_unet, z, cond, uncond, steps=3, cfg=2.0, schedule=SCHED)
    torch.testing.assert_close(bank, ref)
