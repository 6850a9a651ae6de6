"""DMD2-style score distillation for one-step generation, as the last part of Hyper-SD.

Generator: the student LoRA at one step (t = ``dmd.onestep_timestep``, 800 in our presets;
``sample_dmd_onestep``'s model call) maps unit noise z to x. Per generator update, with t ~ U[t_min, t_max] and x_t = α_t x + σ_t ε:
- real score: the teacher (the base UNet with every adapter disabled) with CFG gives μ_real;
- fake score: a second LoRA adapter (``fake``) on the same base UNet gives μ_fake;
- generator loss: ``hypersd_core.losses.dmd_loss(x, μ_real, μ_fake)`` (DMD2's normalised
  gradient), plus Hyper-SD's MSE regulariser ``reg_weight·‖x − x_ref‖²`` to paired references
  x_ref = the teacher's multi-step (CFG, DDIM) sample from the same noise, kept in a small bank
  filled from the first training batches and checkpointed (DMD's regression loss);
- fake updates (``fake_updates`` per generator update, two time-scale): the fake adapter learns
  the ordinary denoising loss on detached generator samples.

One-step timestep (``dmd.onestep_timestep``, written to the LoRA header for the samplers): an
eps-prediction model's x̂0 = (x_t - σ_t ε̂)/α_t amplifies its output errors by σ/α, 14.6x at
t = 999 and 5.1x at t = 800 on the SD schedule; the official Hyper-SDXL 1-step UNet samples pure
noise at 800. On the embedded digits 999 gave noisy 1-step images and 800 clean ones
(benchmarks/RESULTS.md, "Feedback, DMD and the unified LoRA").

Memory plan for SDXL on one GPU. Teacher, fake score and generator share ONE base UNet; only
LoRA adapters differ (``default`` = the student/generator, trainable in the generator step;
``fake``, trainable in the fake-score steps; none for the teacher, which is the base with every
adapter disabled unless model.teacher_path gives a separate UNet). ``use_adapter`` switches in
place: no UNet copies. Peak memory, COUNTED under fake tensors, not measured on a GPU (none was
available): ``python -m benchmarks.memory_sdxl_dmd`` runs two train_steps of this stage on a
full-size random-weight SDXL UNet under torch's FakeTensorMode and counts the bytes of every live
tensor (benchmarks/results/memory_sdxl_dmd.md). 1024² (128² latents), bf16 base, fp32 LoRA and
AdamW, mixed_precision bf16, the sdxl-unified preset's options (real_cfg 7.5, reg_weight 0.25: the
generator runs on batch + as many regression-bank rows); peak of a steady-state step, GiB:

                                              gradient checkpointing on     off
  dmd,     batch 1, LoRA rank 64 (default target list)         11.2         27.8
  dmd,     batch 1, LoRA rank 8                                  7.2         23.4
  dmd,     batch 2, LoRA rank 64                                12.9         46.0
  unified (+ TSCD k=1, EMA), batch 1, rank 64                   12.5         37.7
  unified, batch 2, rank 64                                     14.9         64.9
  unified, batch 2, rank 8                                      10.3         59.1

- persistent between steps: base SDXL UNet (2.567e9 params, bf16) 4.78 GiB; two adapters
  (rank 64 on the default target list: 194.9M params each; rank 8: 24.4M) at 12 B/param
  (fp32 weights + AdamW m, v; fp32 gradients add 4 B/param during a step): 4.36 GiB at rank 64,
  0.55 GiB at rank 8; the unified stage's EMA adds 4 B/param (0.73 / 0.09 GiB); the regression
  bank holds latents only (a few MB);
- the peak is always the generator step: the one-step generator's activations with grad (batch +
  bank rows) stay alive while the teacher's CFG pass (2 x batch rows) and the fake adapter run
  without grad; the fake-score updates peak 0.6-3 GiB lower with checkpointing;
- flash attention (the CUDA choice for bf16, head dim 64) is assumed; the math kernel would raise
  dmd rank 64 batch 1 to 14.1 / 53.7 GiB;
- not counted: CUDA context and allocator slack (~1-2 GB), kernel workspaces, text encoders and
  VAE (cached embeddings and latents), and the feedback term, whose VAE decoder with grad at 1024²
  is estimated at 6-10 GB more.
So with model.gradient_checkpointing the DMD and unified stages fit a 24 GB card at batch 1-2
(without the feedback term); without checkpointing they need a 40 GB (batch 1) to 80 GB
(unified, batch 2) card. The text encoders are not needed once prompt embeddings are cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from hypersd_core.losses import dmd_loss
from hypersd_core.parameterization import add_noise, to_x0_eps, training_target
from hypersd_core.schedule import VPSchedule

from ..checkpoint import load_optimizer_tensors, optimizer_tensors
from ..lora import ADAPTER, adapter_named_parameters
from ..optim import build_optimizer
from . import register_stage
from .adapters import adapter_parameters, add_zero_adapter, use_adapter
from .base import Stage
from .feedback import FeedbackOptions, FeedbackTerm, options_from


@dataclass
class DMDOptions:
    """DMD settings (``dmd:`` in a stage config)."""

    onestep_timestep: int = 999
    t_range: list = field(default_factory=lambda: [0.02, 0.98])  # share of T for the diffusion t
    real_cfg: float = 4.5  # teacher guidance for mu_real (diffusers convention: 1 = none)
    fake_updates: int = 5  # fake-score updates per generator update
    fake_lr: float | None = None  # None: the stage's learning rate
    dm_weight: float = 1.0
    reg_weight: float = 0.25  # Hyper-SD's MSE regulariser to paired teacher samples
    reg_steps: int = 25  # teacher DDIM steps for the reference samples
    reg_cfg: float | None = None  # None: real_cfg
    reg_pairs: int = 64  # size of the (noise, prompt, x_ref) bank, filled from the first batches
    fake_adapter: str = "fake"
    tscd: bool | None = None  # add this stage's TSCD loss (None: on for "unified", off for "dmd")

    def __post_init__(self):
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"dmd.t_range must satisfy 0 <= lo < hi <= 1, got {self.t_range}")
        if self.fake_updates < 1:
            raise ValueError(f"dmd.fake_updates must be >= 1, got {self.fake_updates}")


def unet_x0(
    unet,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    schedule: VPSchedule,
    prediction_type: str = "epsilon",
    uncond: torch.Tensor | None = None,
    cfg: float = 1.0,
    added_cond: dict | None = None,
    added_uncond: dict | None = None,
) -> torch.Tensor:
    """x̂0 of a VP sample x_t at integer timesteps t from the UNet as it is switched now."""
    from train.sampling import GuidedUNet

    out = GuidedUNet(unet, cond, uncond, cfg, added_cond, added_uncond)(x_t, t)
    alpha, sigma = schedule.alpha_sigma(t, dtype=x_t.dtype, device=x_t.device)
    return to_x0_eps(out, x_t, alpha, sigma, prediction_type)[0]


def generate_onestep(
    unet,
    noise: torch.Tensor,
    cond: torch.Tensor,
    schedule: VPSchedule,
    timestep: int = 999,
    prediction_type: str = "epsilon",
    added_cond: dict | None = None,
) -> torch.Tensor:
    """The generator: one model call at ``timestep`` on unit-variance VP noise -> x̂0 (with grad).

    Equals ``sample_dmd_onestep`` on x = z·sqrt(1 + σ²) (the diffusers start), so training and
    sampling agree.
    """
    t = torch.full((noise.shape[0],), int(timestep), device=noise.device, dtype=torch.long)
    return unet_x0(unet, noise, t, cond, schedule, prediction_type, added_cond=added_cond)


def sample_t(
    batch: int, opts: DMDOptions, T: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    lo, hi = int(opts.t_range[0] * T), max(int(opts.t_range[0] * T) + 1, int(opts.t_range[1] * T))
    return torch.randint(lo, hi, (batch,), generator=generator).to(device)


def diffuse(x: torch.Tensor, t: torch.Tensor, schedule: VPSchedule, generator: torch.Generator | None = None):
    """(x_t, eps) with x_t = alpha_t x + sigma_t eps."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    alpha, sigma = schedule.alpha_sigma(t, dtype=x.dtype, device=x.device)
    return add_noise(x, eps, alpha, sigma), eps


def distribution_matching(
    unet,
    x: torch.Tensor,
    cond,
    uncond,
    opts: DMDOptions,
    schedule: VPSchedule,
    student: str,
    prediction_type: str = "epsilon",
    generator=None,
    added_cond=None,
    added_uncond=None,
    teacher=None,
) -> torch.Tensor:
    """DMD2's generator loss on generator samples x (grad flows into x only).

    ``teacher``: a context manager factory yielding the real-score UNet (the trainer's, which may
    be a separate model); None: ``unet`` with its adapters disabled. Leaves ``unet`` switched to
    the ``student`` adapter with exactly the student's LoRA trainable.
    """
    t = sample_t(x.shape[0], opts, schedule.num_train_timesteps, generator, x.device)
    with torch.no_grad():
        x_t, _ = diffuse(x.detach(), t, schedule, generator)
        if teacher is None:
            use_adapter(unet, None)
            mu_real = unet_x0(
                unet, x_t, t, cond, schedule, prediction_type, uncond, opts.real_cfg, added_cond, added_uncond
            )
        else:
            with teacher() as real:
                mu_real = unet_x0(
                    real, x_t, t, cond, schedule, prediction_type, uncond, opts.real_cfg, added_cond, added_uncond
                )
        use_adapter(unet, opts.fake_adapter)
        mu_fake = unet_x0(unet, x_t, t, cond, schedule, prediction_type, added_cond=added_cond)
    use_adapter(unet, student, adapter_parameters(unet, student))
    return dmd_loss(x, mu_real, mu_fake)


def fake_score_loss(
    unet,
    x: torch.Tensor,
    cond,
    opts: DMDOptions,
    schedule: VPSchedule,
    prediction_type: str = "epsilon",
    generator=None,
    added_cond=None,
) -> torch.Tensor:
    """Denoising loss of the fake adapter on detached generator samples (its own prediction space).

    The caller switches the UNet to the fake adapter first (``use_adapter``).
    """
    from train.sampling import GuidedUNet

    x = x.detach()
    t = sample_t(x.shape[0], opts, schedule.num_train_timesteps, generator, x.device)
    x_t, eps = diffuse(x, t, schedule, generator)
    out = GuidedUNet(unet, cond, added_cond=added_cond)(x_t, t)
    alpha, sigma = schedule.alpha_sigma(t, dtype=x.dtype, device=x.device)
    target = training_target(x, eps, alpha, sigma, prediction_type)
    return F.mse_loss(out.float(), target.float())


def regression_loss(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Hyper-SD's MSE regulariser: the one-step output against its paired multi-step reference."""
    return F.mse_loss(x.float(), x_ref.float())


@torch.no_grad()
def build_reference_bank(
    unet,
    noise: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    *,
    steps: int,
    cfg: float,
    schedule: VPSchedule,
    prediction_type: str = "epsilon",
    chunk: int = 16,
    added_cond=None,
    added_uncond=None,
) -> torch.Tensor:
    """Teacher multi-step DDIM samples from ``noise``, in chunks. ``unet`` is run as it is
    switched now: pass the teacher (or call ``use_adapter(unet, None)`` first)."""
    from train.sampling import sample_images

    def rows(d, sl):
        return None if d is None else {k: v[sl] for k, v in d.items()}

    out = []
    for i in range(0, noise.shape[0], chunk):
        sl = slice(i, i + chunk)
        out.append(
            sample_images(
                unet,
                noise[sl],
                cond[sl],
                None if uncond is None else uncond[sl],
                steps=steps,
                cfg=cfg,
                eta=0.0,
                spacing="trailing",
                schedule=schedule,
                prediction_type=prediction_type,
                added_cond=rows(added_cond, sl),
                added_uncond=rows(added_uncond, sl),
            )
        )
    return torch.cat(out)


# -- the stages -----------------------------------------------------------------------------------


@register_stage("dmd")
class DMDStage(Stage):
    """Score distillation of the student LoRA at one step (``options.dmd``), with the fake score
    as a second adapter on the shared UNet; optional ReFL term (``options.feedback``) and the
    TSCD loss of this stage's segments in the same backward (``options.dmd.tscd: true``).

    The fake adapter is outside DDP (added after ``accelerator.prepare``): its gradients are
    averaged across processes by hand; its updates are not loss-scaled, so train it in bf16 or
    fp32 rather than fp16; it steps on every micro-batch under gradient accumulation.
    """

    unified = False

    def setup(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        self.opts = options_from(cfg, "dmd", DMDOptions)
        self.use_tscd = self.unified if self.opts.tscd is None else bool(self.opts.tscd)
        unet = ctx.base_unet
        name = self.opts.fake_adapter
        if name in getattr(unet, "peft_config", {}):
            self.fake_params = adapter_parameters(unet, name)
            with torch.no_grad():  # a new stage starts its fake score at the teacher again
                for n, p in adapter_named_parameters(unet, name).items():
                    if "lora_B." in n:
                        p.zero_()
        else:
            self.fake_params = add_zero_adapter(unet, name, like=ADAPTER)
        for p in self.fake_params:
            p.data = p.data.float()
        o = ctx.config.optim
        lr = self.opts.fake_lr or (cfg.lr if cfg.lr is not None else o.lr)
        self.fake_opt = build_optimizer(self.fake_params, dataclasses.replace(o, lr=lr), torch.device(ctx.device))
        use_adapter(unet, ADAPTER, ctx.lora_params)
        self.tscd = None
        if self.use_tscd:
            from .tscd import TSCDStage

            self.tscd = TSCDStage(ctx, cfg, self.index)
            self.tscd.setup()
        fb = (cfg.options or {}).get("feedback")
        self.feedback = FeedbackTerm(ctx, options_from(cfg, "feedback", FeedbackOptions)) if fb is not None else None
        self.bank: dict[str, torch.Tensor] = {}

    # -- pieces -------------------------------------------------------------------------------
    def _randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.ctx.generator).to(self.ctx.device)

    def _sync_fake_grads(self) -> None:
        """The fake adapter is not in DDP's parameter list: average its gradients by hand."""
        acc = self.ctx.accelerator
        if acc.num_processes > 1:
            import torch.distributed as dist

            for p in self.fake_params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= acc.num_processes

    def _fake_updates(self, batch) -> float:
        ctx, unet = self.ctx, self.ctx.base_unet
        with torch.no_grad(), ctx.accelerator.autocast():
            use_adapter(unet, ADAPTER)
            x = generate_onestep(
                unet,
                self._randn(batch.x0.shape),
                batch.cond,
                ctx.schedule,
                self.opts.onestep_timestep,
                ctx.prediction_type,
                batch.added_cond,
            ).float()
        use_adapter(unet, self.opts.fake_adapter, self.fake_params)
        total = 0.0
        for _ in range(self.opts.fake_updates):
            with ctx.accelerator.autocast():
                loss = fake_score_loss(
                    unet, x, batch.cond, self.opts, ctx.schedule, ctx.prediction_type, ctx.generator, batch.added_cond
                )
            loss.backward()
            self._sync_fake_grads()
            if ctx.config.optim.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.fake_params, ctx.config.optim.max_grad_norm)
            self.fake_opt.step()
            self.fake_opt.zero_grad(set_to_none=True)
            total += float(loss.detach())
        use_adapter(unet, ADAPTER, ctx.lora_params)
        return total / self.opts.fake_updates

    def _fill_bank(self, batch) -> None:
        """Add this batch's (noise, prompt, teacher sample) pairs until the bank holds reg_pairs."""
        ctx, o = self.ctx, self.opts
        have = len(self.bank["z"]) if self.bank else 0
        m = min(o.reg_pairs - have, batch.x0.shape[0])
        if m <= 0:
            return
        z = self._randn(batch.x0[:m].shape)
        cond = batch.cond[:m]
        added = None if batch.added_cond is None else {k: v[:m] for k, v in batch.added_cond.items()}
        unc, unc_added = ctx.uncond(m)
        cfg = o.reg_cfg if o.reg_cfg is not None else o.real_cfg
        with ctx.teacher() as teacher, ctx.accelerator.autocast():
            x_ref = build_reference_bank(
                teacher,
                z,
                cond,
                unc,
                steps=o.reg_steps,
                cfg=cfg,
                schedule=ctx.schedule,
                prediction_type=ctx.prediction_type,
                added_cond=added,
                added_uncond=unc_added,
            )
        use_adapter(ctx.base_unet, ADAPTER, ctx.lora_params)
        new = {"z": z, "cond": cond, "x_ref": x_ref.float()}
        if added is not None:
            new.update({f"added.{k}": v for k, v in added.items()})
        self.bank = {k: torch.cat([self.bank[k], v.detach()]) if self.bank else v.detach() for k, v in new.items()}

    def _bank_rows(self, n: int):
        idx = torch.randint(len(self.bank["z"]), (n,), generator=self.ctx.generator).to(self.ctx.device)
        added = {k[6:]: v[idx] for k, v in self.bank.items() if k.startswith("added.")} or None
        return self.bank["z"][idx], self.bank["cond"][idx], self.bank["x_ref"][idx], added

    # -- the loss terms ---------------------------------------------------------------------------
    def generator_terms(self, batch, gen_unet) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """DMD's distribution-matching loss of one generator batch and, with ``reg_weight`` > 0,
        Hyper-SD's regression of bank rows to their teacher samples (one generator forward for both):
        (l_dm, l_reg or None, logs)."""
        ctx, o = self.ctx, self.opts
        n = batch.x0.shape[0]
        z, cond, added = self._randn(batch.x0.shape), batch.cond, batch.added_cond
        m = 0
        if o.reg_weight > 0:
            bz, bcond, bref, badded = self._bank_rows(n)
            m = n
            z, cond = torch.cat([z, bz]), torch.cat([cond, bcond])
            added = None if added is None else {k: torch.cat([added[k], badded[k]]) for k in added}
        x = generate_onestep(gen_unet, z, cond, ctx.schedule, o.onestep_timestep, ctx.prediction_type, added).float()
        unc, unc_added = ctx.uncond(n)
        l_dm = distribution_matching(
            ctx.base_unet,
            x[:n],
            batch.cond,
            unc,
            o,
            ctx.schedule,
            ADAPTER,
            ctx.prediction_type,
            ctx.generator,
            batch.added_cond,
            unc_added,
            ctx.teacher,
        )
        logs = {"loss/dmd": float(l_dm.detach())}
        l_reg = None
        if m:
            l_reg = regression_loss(x[n:], bref)
            logs["loss/regression"] = float(l_reg.detach())
        return l_dm, l_reg, logs

    # -- the step -------------------------------------------------------------------------------
    def train_step(self, batch, step: int) -> dict[str, float]:
        """Fake-score updates, then one LoRA step on the weighted sum of this stage's terms:
        [TSCD] + dm_weight * DMD + reg_weight * regression + [feedback]."""
        ctx, o = self.ctx, self.opts
        with ctx.phase("fake_score"):
            logs = {"loss/fake_score": self._fake_updates(batch)}
        if o.reg_weight > 0:
            with ctx.phase("bank"):
                self._fill_bank(batch)
        pieces = None
        with ctx.accelerator.autocast():
            if self.tscd is not None:
                # The TSCD terms make the one forward through the (possibly DDP-wrapped) UNet; the
                # generator then runs on the bare module, after their EMA swaps.
                l_tscd, tscd_logs, pieces = self.tscd.tscd_loss(batch)
                logs.update(tscd_logs)
            with ctx.phase("gen_forward"):
                l_dm, l_reg, gen_logs = self.generator_terms(
                    batch, ctx.base_unet if self.tscd is not None else ctx.unet
                )
            logs.update(gen_logs)
            loss = o.dm_weight * l_dm
            if l_reg is not None:
                loss = loss + o.reg_weight * l_reg
            if self.feedback is not None and step % self.feedback.opts.every == 0:
                l_fb, fb_logs = self.feedback(batch)
                loss = loss + l_fb
                logs.update(fb_logs)
            if self.tscd is not None:
                loss = l_tscd + loss
        ctx.step_lora(loss, ctx.config.optim.max_grad_norm)
        if self.tscd is not None:
            logs.update(self.tscd.after_lora_step(batch, pieces))
        logs["loss/total"] = float(loss.detach())
        return {k: float(v) for k, v in logs.items()}

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        name = self.opts.fake_adapter
        out = {
            "fake." + n: p.detach().float().cpu().clone()
            for n, p in adapter_named_parameters(self.ctx.base_unet, name).items()
        }
        out.update(optimizer_tensors(self.fake_opt, "fake_opt."))
        out.update({"bank." + k: v.detach().cpu() for k, v in self.bank.items()})
        if self.tscd is not None:
            out.update({"tscd." + k: v for k, v in self.tscd.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        name = self.opts.fake_adapter
        params = adapter_named_parameters(self.ctx.base_unet, name)
        missing = [n for n in params if "fake." + n not in state]
        if missing:
            raise ValueError(
                f"checkpoint lacks the fake-score adapter ({len(missing)} tensors, e.g. {missing[0]}); "
                "was it written by another stage or lora config?"
            )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state["fake." + n].to(p))
        load_optimizer_tensors(self.fake_opt, state, "fake_opt.")
        self.bank = {k[5:]: v.to(self.ctx.device) for k, v in state.items() if k.startswith("bank.")}
        if self.tscd is not None:
            self.tscd.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("tscd.")})

    @contextlib.contextmanager
    def sampling_context(self):
        use_adapter(self.ctx.base_unet, ADAPTER, self.ctx.lora_params)
        with self.tscd.sampling_context() if self.tscd is not None else contextlib.nullcontext():
            yield

    steps = [1]  # the step counts the exported LoRA is for

    def metadata(self) -> dict:
        return {**super().metadata(), "steps": list(self.steps), "onestep_timestep": self.opts.onestep_timestep}


@register_stage("unified")
class UnifiedStage(DMDStage):
    """The final stage of the unified LoRA: DMD at one step + the TSCD loss (this stage's
    segments, default on) + optional ReFL, exported as ONE LoRA for 1 to 8 steps."""

    unified = True
    steps = list(range(1, 9))
