"""The TSCD stage: consistency distillation within k trajectory segments, with an optional
adversarial term (discriminator heads on the frozen teacher's features) and noise perturbation.
The per-sample math is hypersd_core.tscd; this file wires models and optimizers around it."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.func import functional_call

from hypersd_core.losses import adversarial_d_loss, adversarial_g_loss, consistency_loss
from hypersd_core.parameterization import add_noise
from hypersd_core.segments import SegmentGrid
from hypersd_core.tscd import (
    TSCDTimesteps,
    adversarial_timesteps,
    consistency_target,
    mixed_tscd_timesteps,
    perturb_noise,
    renoise_in_segment,
    student_edge_prediction,
    teacher_ddim_step,
    tscd_timesteps,
)

from ..checkpoint import load_optimizer_tensors, optimizer_tensors
from ..errors import ResumeError
from ..discriminator import FeatureDiscriminator, feature_channels, teacher_features
from ..lora import LoraEMA
from ..trajectories import TrajectoryBank, bank_header, build_bank, made_by, record_indices
from . import register_stage
from .base import Batch, Stage


def _rows(d: dict | None, mask: torch.Tensor) -> dict | None:
    return None if d is None else {k: v[mask] for k, v in d.items()}


def _cat(a: dict | None, b: dict | None) -> dict | None:
    return None if a is None else {k: torch.cat([a[k], b[k]]) for k in a}


def _unet_kw(added: dict | None) -> dict:
    return {"added_cond_kwargs": added} if added else {}


@dataclass
class BankRows(Batch):
    """A batch drawn from the teacher's trajectory bank: ``x0`` the trajectories' clean ends,
    ``x_t`` their points at the rows' segment starts, ``target`` at the segments' edges."""

    x_t: torch.Tensor | None = None
    target: torch.Tensor | None = None
    ts: TSCDTimesteps | None = None
    segments: torch.Tensor | None = None


@register_stage("tscd")
class TSCDStage(Stage):
    def setup(self) -> None:
        ctx, cfg = self.ctx, self.cfg
        self.grid = SegmentGrid(ctx.config.solver_steps, cfg.segments, ctx.config.num_train_timesteps)
        self.keep_grids = [
            SegmentGrid(ctx.config.solver_steps, k, ctx.config.num_train_timesteps) for k in cfg.keep_segments
        ]
        # the target network (an EMA of the LoRA); trajectory rows need none (their target is the teacher's)
        self.ema = LoraEMA(ctx.base_unet, cfg.ema_decay) if cfg.ema_decay > 0 and not cfg.trajectories else None
        self.disc = self.d_opt = None
        if cfg.adv_weight > 0:
            self.disc = FeatureDiscriminator(feature_channels(ctx.base_unet)).to(ctx.device)
            opt = torch.optim.AdamW(self.disc.parameters(), lr=ctx.config.optim.disc_lr, betas=(0.0, 0.99))
            self.disc_wrapped, self.d_opt = ctx.accelerator.prepare(self.disc, opt)
        self.bank = self._bank() if cfg.trajectories > 0 else None
        if self.bank is not None:  # the solver-grid index of each record
            grid = SegmentGrid(ctx.config.solver_steps, self.bank.finest, ctx.config.num_train_timesteps)
            self.bank_index = torch.tensor(record_indices(grid, self.bank.finest))

    def _segment_counts(self) -> list[int]:
        kept = self.cfg.keep_segments if self.cfg.keep_fraction > 0 else []
        return [self.cfg.segments, *kept]

    def _bank(self) -> TrajectoryBank:
        """This process's share of the stage's trajectory bank: read back from the output folder
        (a resumed run), else built from the teacher and written there."""
        ctx, acc = self.ctx, self.ctx.accelerator
        finest = math.lcm(*self._segment_counts())
        count = -(-self.cfg.trajectories // acc.num_processes)
        path = self._bank_path(self.index + 1)
        if path.is_file():
            bank = TrajectoryBank.load(path)
            if bank.size != count or bank.finest != finest:
                raise ResumeError(
                    f"{path} holds {bank.size} trajectories of {bank.finest} segments, this stage needs "
                    f"{count} of {finest}; was the config changed since? train again with --overwrite"
                )
            return bank
        say = print if acc.is_main_process else (lambda *a, **k: None)
        earlier = self._earlier_bank(count, finest)
        if earlier is not None:
            say(f"stage {self.index + 1}: training on {earlier.parent.name}/{earlier.name} (the same teacher runs)")
            return TrajectoryBank.load(earlier)
        t0 = time.time()
        say(
            f"stage {self.index + 1}: building {count} guided teacher trajectories per process "
            f"({ctx.config.solver_steps} steps each)",
            flush=True,
        )
        bank = build_bank(self, count, finest, report=lambda line: say(line, flush=True))
        bank.save(path)
        say(f"stage {self.index + 1}: trajectory bank built in {time.time() - t0:.0f} s ({path.parent})", flush=True)
        return bank

    def _bank_path(self, stage_number: int) -> Path:
        """This process's bank file of stage ``stage_number`` (1-based) in the output folder."""
        rank = self.ctx.accelerator.process_index
        return Path(self.ctx.output_dir) / "trajectories" / f"stage{stage_number}_rank{rank}.safetensors"

    def _earlier_bank(self, count: int, finest: int) -> Path | None:
        """An earlier stage's bank that this stage can train on as it is: the same number of trajectories,
        solver grid and guidance range, recorded at edges that include this stage's (the nearest
        stage first). Its trajectories do not depend on the LoRA, so one bank serves 8 -> 4 -> 2 -> 1."""
        for j in range(self.index, 0, -1):
            path = self._bank_path(j)
            if not path.is_file():
                continue
            made, shape = bank_header(path)
            if made == made_by(self) and shape[1] == count and (shape[0] - 1) % finest == 0:
                return path
        return None

    def _keep_draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Which rows train an earlier stage's segmentation (a keep_fraction share) and which one
        (an index into keep_segments); None when the stage keeps none."""
        if not (self.keep_grids and self.cfg.keep_fraction > 0):
            return None
        kept = torch.rand(n, generator=self.ctx.generator) < self.cfg.keep_fraction
        return kept, torch.randint(0, len(self.keep_grids), (n,), generator=self.ctx.generator)

    @property
    def wants_data(self) -> bool:
        return not self.cfg.trajectories  # trajectory rows come from the bank, not the data source

    def bank_rows(self, n: int) -> BankRows:
        """``n`` rows from the trajectory bank."""
        ctx, cfg, bank = self.ctx, self.cfg, self.bank
        segments = torch.full((n,), cfg.segments, dtype=torch.long)
        keeping = self._keep_draw(n)
        if keeping is not None:
            kept, pick = keeping
            segments = torch.where(kept, torch.tensor(cfg.keep_segments)[pick], segments)
        x_t, target, start, edge, traj = bank.draw(n, segments, ctx.generator)
        t, t_edge = bank.timesteps[start], bank.timesteps[edge]
        ts = TSCDTimesteps(self.bank_index[start], t, t_edge, t_edge, torch.ones(n, dtype=torch.bool)).to(ctx.device)
        cond, added = bank.rows(traj, ctx.device)
        dev = lambda v: v.to(ctx.device, torch.float32)  # noqa: E731
        return BankRows(
            x0=dev(bank.x[-1, traj]),
            cond=cond,
            prompts=[],
            added_cond=added,
            x_t=dev(x_t),
            target=dev(target),
            ts=ts,
            segments=segments.to(ctx.device) if keeping is not None else None,
        )

    # -- pieces -------------------------------------------------------------------------------
    def _randn(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.ctx.generator).to(like.device, like.dtype)

    def _guidance(self, batch: int) -> torch.Tensor:
        u = torch.rand(batch, generator=self.ctx.generator, dtype=torch.float64)
        return (self.cfg.cfg_min + u * (self.cfg.cfg_max - self.cfg.cfg_min)).float()

    @torch.no_grad()
    def _teacher_step(self, x_t, ts, cond, added, w):
        ctx = self.ctx
        with ctx.teacher() as teacher:
            if bool((w == 1).all()):
                out = teacher(x_t, ts.t, encoder_hidden_states=cond, **_unet_kw(added)).sample
                cond_out, uncond_out = out, None
            else:
                unc, unc_added = ctx.uncond(x_t.shape[0])
                out = teacher(
                    torch.cat([x_t, x_t]),
                    torch.cat([ts.t, ts.t]),
                    encoder_hidden_states=torch.cat([cond, unc]),
                    **_unet_kw(_cat(added, unc_added)),
                ).sample
                cond_out, uncond_out = out.chunk(2)
        return teacher_ddim_step(
            cond_out.float(),
            None if uncond_out is None else uncond_out.float(),
            w.to(x_t.device),
            x_t.float(),
            ts,
            ctx.schedule,
            ctx.prediction_type,
        )

    @torch.no_grad()
    def _target(self, x_prev, ts, cond, added):
        """Boundary rows keep the teacher's x_{t'}; the others run the target network at t'."""
        ctx = self.ctx
        inner = ~ts.boundary
        if not bool(inner.any()):
            return consistency_target(x_prev, None, ts, ctx.schedule, ctx.prediction_type)
        swap = self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()
        with swap:
            part = ctx.unet(
                x_prev[inner].to(ctx.weight_dtype),
                ts.t_prev[inner],
                encoder_hidden_states=cond[inner],
                **_unet_kw(_rows(added, inner)),
            ).sample
        out = torch.zeros_like(x_prev)
        out[inner] = part.float()
        return consistency_target(x_prev, out, ts, ctx.schedule, ctx.prediction_type)

    def _disc_logits(self, x, t, cond, added, train_heads: bool):
        with self.ctx.teacher() as teacher:
            # The unwrapped module: this forward stops early and, in the generator pass, carries
            # gradients in the same iteration as the student's DDP forward.
            net = self.ctx.base_unet if teacher is self.ctx.unet else teacher
            # No activation checkpointing here: backward would recompute with the LoRA enabled again.
            ckpt_on = getattr(net, "is_gradient_checkpointing", False)
            if ckpt_on:
                net.disable_gradient_checkpointing()
            try:
                feats = teacher_features(net, net, x.to(self.ctx.weight_dtype), t, cond, added)
            finally:
                if ckpt_on:
                    net.enable_gradient_checkpointing()
        if train_heads:
            return self.disc_wrapped(feats)
        # Generator pass: gradients flow to x through detached head weights, never into the heads.
        params = {k: v.detach() for k, v in self.disc.named_parameters()}
        return functional_call(self.disc, params, (feats,))

    def _student_edge(self, x_t, ts, batch: Batch) -> torch.Tensor:
        """The student (with gradients) at t, jumped to its segment edge."""
        ctx = self.ctx
        out = ctx.unet(
            x_t.to(ctx.weight_dtype), ts.t, encoder_hidden_states=batch.cond, **_unet_kw(batch.added_cond)
        ).sample
        return student_edge_prediction(out.float(), x_t, ts, ctx.schedule, ctx.prediction_type)

    # -- the loss terms ---------------------------------------------------------------------------
    def consistency_term(self, batch: Batch) -> tuple[torch.Tensor, dict, dict]:
        """TSCD's consistency loss: (loss, logs, the step's pieces the other terms reuse)."""
        ctx, cfg = self.ctx, self.cfg
        x0 = batch.x0.float()
        if isinstance(batch, BankRows):  # the teacher's own trajectory: input and target from the bank
            pred = self._student_edge(batch.x_t, batch.ts, batch)
            l_cd = consistency_loss(pred, batch.target, cfg.loss, cfg.huber_c)
            pieces = {"x0": x0, "ts": batch.ts, "segments": batch.segments, "pred": pred, "target": batch.target}
            return l_cd, {"loss/consistency": l_cd.detach()}, pieces
        n = x0.shape[0]
        index = self.grid.sample_indices(n, ctx.generator)
        segments = None
        keeping = self._keep_draw(n)
        if keeping is not None:
            kept, pick = keeping
            ts, segments = mixed_tscd_timesteps([self.grid, *self.keep_grids], index, torch.where(kept, pick + 1, 0))
        else:
            ts = tscd_timesteps(self.grid, index)
        ts = ts.to(ctx.device)
        noise = perturb_noise(self._randn(x0), cfg.noise_perturbation, ctx.generator)
        a, s = ctx.schedule.alpha_sigma(ts.t, device=ctx.device)
        x_t = add_noise(x0, noise, a, s)
        w = self._guidance(n)
        x_prev = self._teacher_step(x_t.to(ctx.weight_dtype), ts, batch.cond, batch.added_cond, w)
        target = self._target(x_prev, ts, batch.cond, batch.added_cond)
        pred = self._student_edge(x_t, ts, batch)
        l_cd = consistency_loss(pred, target, cfg.loss, cfg.huber_c)
        pieces = {"x0": x0, "ts": ts, "segments": segments, "pred": pred, "target": target}
        return l_cd, {"loss/consistency": l_cd.detach()}, pieces

    def adversarial_term(self, batch: Batch, pieces: dict) -> tuple[torch.Tensor, dict]:
        """The generator side of the adversarial loss on the student's edge prediction, re-noised
        within its segment; records in ``pieces`` what the discriminator update needs."""
        ctx, ts, n = self.ctx, pieces["ts"], pieces["x0"].shape[0]
        u = torch.rand(n, generator=ctx.generator)
        t_a = adversarial_timesteps(ts, self.grid, u, pieces["segments"]).to(ctx.device)
        z = self._randn(pieces["x0"])
        fake = renoise_in_segment(pieces["pred"], ts.t_edge, t_a, z, ctx.schedule)
        l_g = adversarial_g_loss(
            self._disc_logits(fake, t_a, batch.cond, batch.added_cond, False).float(), self.cfg.adv_loss
        )
        pieces.update(t_a=t_a, z=z, fake=fake)
        return l_g, {"loss/adv_g": l_g.detach()}

    def tscd_loss(self, batch: Batch) -> tuple[torch.Tensor, dict, dict]:
        """This stage's weighted TSCD loss (consistency + adversarial), its logs and pieces.
        Call inside ``accelerator.autocast()``, then :meth:`after_lora_step` after the LoRA step."""
        l_cd, logs, pieces = self.consistency_term(batch)
        loss = self.cfg.consistency_weight * l_cd
        if self.disc is not None:
            l_g, g_logs = self.adversarial_term(batch, pieces)
            loss = loss + self.cfg.adv_weight * l_g
            logs.update(g_logs)
        return loss, logs, pieces

    def after_lora_step(self, batch: Batch, pieces: dict) -> dict:
        """EMA update, then the discriminator's own steps (real: the target, fake: the student)."""
        ctx, cfg, acc = self.ctx, self.cfg, self.ctx.accelerator
        if self.ema is not None and acc.sync_gradients:
            self.ema.update()
        if self.disc is None:
            return {}
        ts, t_a, z = pieces["ts"], pieces["t_a"], pieces["z"]
        real = renoise_in_segment(pieces["target"], ts.t_edge, t_a, z, ctx.schedule)
        fake = pieces["fake"].detach()
        both_t, both_c = torch.cat([t_a, t_a]), torch.cat([batch.cond, batch.cond])
        both_added = _cat(batch.added_cond, batch.added_cond)
        for _ in range(max(1, cfg.d_steps)):
            with acc.autocast():
                logits = self._disc_logits(torch.cat([real, fake]), both_t, both_c, both_added, True).float()
                l_d = adversarial_d_loss(*logits.chunk(2), cfg.adv_loss)
            acc.backward(l_d)
            self.d_opt.step()
            self.d_opt.zero_grad(set_to_none=True)
        return {"loss/adv_d": l_d.detach()}

    # -- the step -------------------------------------------------------------------------------
    def train_step(self, batch: Batch | None, step: int) -> dict[str, float]:
        if self.bank is not None:
            batch = self.bank_rows(self.ctx.config.data.batch_size)
        with self.ctx.accelerator.autocast():
            loss, logs, pieces = self.tscd_loss(batch)
        self.ctx.step_lora(loss, self.ctx.config.optim.max_grad_norm)
        logs.update(self.after_lora_step(batch, pieces))
        logs["loss/total"] = loss.detach()
        return {k: float(v) for k, v in logs.items()}

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.ema is not None:
            out.update(self.ema.state_dict("ema."))
        if self.disc is not None:
            out.update({"disc." + k: v.detach().cpu() for k, v in self.disc.state_dict().items()})
            out.update(optimizer_tensors(self.d_opt, "disc_opt."))
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state, "ema.")
        if self.disc is not None:
            self.disc.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("disc.")})
            load_optimizer_tensors(self.d_opt, state, "disc_opt.")
