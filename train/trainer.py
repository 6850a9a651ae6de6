"""The training driver: models, LoRA, data, stages in order, checkpoints, export and evaluation.
Run through ``python -m train`` (one process) or ``accelerate launch -m train`` (several)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch

from hypersd_models.loading import DTYPES, load_model

from . import checkpoint as ckpt
from .conditioning import TextConditioner
from .config import TrainConfig
from .data import build_source
from .errors import ResumeError, TrainingDiverged
from .export import export_lora, lora_metadata, onestep_timestep
from .grids import grid_image, sample_grid_rows, save_grid
from .lora import add_lora, adapters_disabled, load_lora_tensors, lora_tensors
from .optim import build_lr_scheduler, build_optimizer, build_zero_optimizer, reset_state
from .stages import StageContext, get_stage
from .tracking import flat_config, log_image, trackers


def _write_json(path: Path, data: dict, **kw) -> None:
    """Replace ``path`` atomically: a killed run never leaves a half-written config/summary/metrics."""
    from hypersd_core.lora_formats import atomic_write_text

    text = json.dumps(data, indent=2, **kw)
    atomic_write_text(str(path), text)


def init_lora_from(unet: torch.nn.Module, path: str) -> None:
    """Load a LoRA file (kohya or peft layout) into the student's adapter."""
    from hypersd_core.lora_formats import detect_format, kohya_to_peft, load_lora
    from peft import set_peft_model_state_dict

    sd, _ = load_lora(path)
    if detect_format(sd) == "kohya":
        names = [n for n, _ in unet.named_modules()]
        sd, _ = kohya_to_peft(sd, names)
    sd = {k[len("unet.") :] if k.startswith("unet.") else k: v for k, v in sd.items()}
    set_peft_model_state_dict(unet, sd, adapter_name="default")


def prepare_student(unet: torch.nn.Module, cfg: TrainConfig, accelerator, weight_dtype=torch.float32):
    """The student as the trainer builds it: ``unet`` on the accelerator's device in
    ``weight_dtype``, the LoRA (``cfg.lora``; fp32 weights over any base dtype), gradient
    checkpointing per ``cfg.model``, each configured stage's extra adapters, the LoRA optimizer,
    both passed through ``accelerator.prepare``. Returns (prepared unet, LoRA params, prepared
    optimizer); ``unet`` itself stays the unwrapped module."""
    unet.to(accelerator.device)
    if weight_dtype != torch.float32:
        unet.to(dtype=weight_dtype)
    lora_params = add_lora(unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules)
    for p in lora_params:  # LoRA weights train in fp32 even over an fp16/bf16 base
        p.data = p.data.float()
    if cfg.lora.init_from:
        init_lora_from(unet, cfg.lora.init_from)
    if cfg.model.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    for scfg in cfg.stages:
        get_stage(scfg.name).configure_unet(unet, scfg)
    if cfg.optim.zero and accelerator.num_processes > 1:  # per-process optimizer shards, saved by each process
        from accelerate.optimizer import AcceleratedOptimizer

        prepared = accelerator.prepare(unet)
        optimizer = AcceleratedOptimizer(
            build_zero_optimizer(lora_params, cfg.optim, accelerator.device),
            device_placement=False,
            scaler=accelerator.scaler,
        )
    else:
        opt = build_optimizer(lora_params, cfg.optim, accelerator.device)
        prepared, optimizer = accelerator.prepare(unet, opt)
    return prepared, lora_params, optimizer


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.out = Path(cfg.output)
        self.results: dict = {}

    # -- setup ----------------------------------------------------------------------------------
    def build(self) -> StageContext:
        """Accelerator, models, the student LoRA and its optimizer, data and the StageContext the
        stages train through (also ``self.ctx``); :meth:`run` calls it first."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # cpu=True without CUDA: processes started by torchrun (`accelerate launch --multi_gpu`) then
        # form a gloo CPU group; `accelerate launch --cpu` with several processes needs MPI instead.
        self.acc = acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
            log_with=trackers(cfg.log_with, self.out) or None,
            project_config=ProjectConfiguration(project_dir=str(self.out)),
        )
        if not self.resume and acc.is_main_process and ckpt.latest_checkpoint(self.out) is not None:
            raise FileExistsError(
                f"{self.out} already holds checkpoints: pass --resume to continue that run, or choose another --output"
            )
        torch.manual_seed(cfg.seed + acc.process_index)
        self.model = m = load_model(cfg.model)
        self.weight_dtype = DTYPES[cfg.model.dtype] if acc.device.type == "cuda" else torch.float32
        for e in m.text_encoders:
            e.to(acc.device)
        if m.vae is not None:
            m.vae.to(acc.device, self.weight_dtype)
        if m.teacher_unet is not None:
            m.teacher_unet.to(acc.device, self.weight_dtype)
        self.unet, self.lora_params, self.optimizer = prepare_student(m.unet, cfg, acc, self.weight_dtype)
        # save_state/load_state keep optimizer and RNG state; the LoRA is saved as lora.safetensors and the
        # frozen base never, so the model weights accelerate would write are dropped (DDP/CPU path).
        acc.register_save_state_pre_hook(lambda models, weights, out_dir: weights.clear())
        acc.register_load_state_pre_hook(lambda models, in_dir: models.clear())
        self.base_unet = m.unet
        self.conditioner = TextConditioner(
            m.text_encoders,
            m.tokenizers,
            acc.device,
            self.weight_dtype,
            resolution=cfg.data.resolution or m.resolution,
            memo=cfg.data.kind == "digits",
        )
        self.source = build_source(
            cfg.data, m, self.conditioner, acc.device, acc.process_index, acc.num_processes, cfg.seed
        )
        self.generator = torch.Generator().manual_seed(cfg.seed * 7 + 1000 * acc.process_index + 1)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_json(self.out / "config.json", cfg.to_dict())
        acc.init_trackers(cfg.tracker_project, config=flat_config(cfg.to_dict()))  # main process only
        self.ctx = StageContext(
            config=cfg,
            accelerator=acc,
            unet=self.unet,
            base_unet=self.base_unet,
            schedule=m.schedule,
            prediction_type=m.prediction_type,
            lora_params=self.lora_params,
            optimizer=self.optimizer,
            uncond=self.conditioner.uncond,
            decode=self.decode,
            teacher=self.teacher,
            generator=self.generator,
            log=self.log,
            output_dir=str(self.out),
            weight_dtype=self.weight_dtype,
            extras=dict(m.extras),
            encode=self.conditioner.encode,
            next_batch=self.source.next_batch,
        )
        return self.ctx

    @contextlib.contextmanager
    def teacher(self, local: bool = False):
        """The frozen teacher: a separate UNet, or the student's base with the LoRA disabled.

        Training forwards go through the wrapper (FSDP needs its forward); ``local`` gives the
        unwrapped module for work one process does alone (grids, metrics), where a wrapper's
        collectives would wait for the other processes forever."""
        if self.model.teacher_unet is not None:
            yield self.model.teacher_unet
        else:
            with adapters_disabled(self.base_unet):
                yield self.base_unet if local else self.unet

    def decode(self, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Model space -> images in [-1, 1]; ``grad=True`` keeps the graph (feedback rewards)."""
        vae = self.model.vae
        if vae is None:
            return x
        with torch.set_grad_enabled(grad):
            return vae.decode((x / self.model.scaling_factor).to(vae.dtype)).sample.float()

    def log(self, scalars: dict, step: int) -> None:
        self.acc.log(scalars, step=step)  # every tracker, main process only

    # -- checkpoints ----------------------------------------------------------------------------
    def _save(self, stage, state: dict) -> None:
        """Every process writes its shards into a temp folder; the main process renames it into place
        once all have finished, so a finished checkpoint is never half-written."""
        acc = self.acc
        acc.wait_for_everyone()
        tmp = ckpt.checkpoint_root(self.out) / f".tmp-step-{state['global_step']}"
        if acc.is_main_process:
            ckpt.begin(self.out, state["global_step"])
        acc.wait_for_everyone()
        # Optimizer state (DDP: the main process's full copy; FSDP / DeepSpeed: one shard per process)
        # and every process's RNG states.
        acc.save_state(str(tmp / ckpt.ACCELERATE_DIR))
        if acc.is_main_process:
            ckpt.write_part(tmp, "lora", lora_tensors(self.base_unet))
            ckpt.write_part(tmp, "stage", stage.state_dict() if stage is not None else {})
        data_t, data_m = self.source.state()
        tensors = {**data_t, "stage_gen": self.generator.get_state(), **ckpt.zero_shard_tensors(self.optimizer)}
        ckpt.write_part(tmp, f"rank{acc.process_index}", tensors, {"data": data_m})
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.commit(tmp, dict(state, num_processes=acc.num_processes), self.cfg.keep_checkpoints)
        acc.wait_for_everyone()

    def _load_resume(self) -> tuple[dict, Path | None]:
        main = self.acc.is_main_process
        if main:
            for p in ckpt.remove_partial_files(self.out):
                print(f"removed {p.name}, left half-written by the interrupted run", flush=True)
        self.acc.wait_for_everyone()
        folder = ckpt.latest_checkpoint(
            self.out, verify=True, report=(lambda line: print(line, flush=True)) if main else None
        )
        if folder is None:
            if ckpt.latest_checkpoint(self.out) is not None:
                raise ResumeError(
                    f"no intact checkpoint in {ckpt.checkpoint_root(self.out)} (all are damaged, see above); "
                    "train again with --overwrite (the damaged run is moved aside)"
                )
            if self.resume:
                print(f"--resume: no checkpoint in {self.out}; starting from the beginning")
            return {"stage": 0, "step": 0, "global_step": 0}, None
        state = json.loads((folder / "state.json").read_text())
        if self.acc.is_main_process:
            print(f"resuming from {folder.name}: stage {state['stage'] + 1}, step {state['step']}", flush=True)
        if state.get("num_processes", 1) != self.acc.num_processes:
            raise ResumeError(
                f"checkpoint {folder} was written by {state['num_processes']} processes; resume it with "
                f"the same number (got {self.acc.num_processes})"
            )
        load_lora_tensors(self.base_unet, ckpt.read_part(folder, "lora")[0])
        return state, folder

    def _restore_process_state(self, folder: Path) -> None:
        acc_dir = folder / ckpt.ACCELERATE_DIR
        if not acc_dir.is_dir():
            raise ResumeError(
                f"checkpoint {folder} has no {ckpt.ACCELERATE_DIR}/ folder (written by an older "
                "version of the trainer); train again with --overwrite"
            )
        self.acc.load_state(str(acc_dir))  # optimizer (shards) and this process's RNG states
        tensors, meta = ckpt.read_part(folder, f"rank{self.acc.process_index}")
        ckpt.load_zero_shard(self.optimizer, tensors)
        self.source.load_state(tensors, meta["data"])
        self.generator.set_state(tensors["stage_gen"])

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> dict:
        t_start = time.time()
        self.build()
        cfg, acc = self.cfg, self.acc
        state, folder = self._load_resume() if self.resume else ({"stage": 0, "step": 0, "global_step": 0}, None)
        mid_stage = folder is not None and state["step"] > 0
        if folder is not None and not mid_stage:  # a stage boundary: the next stage is set up after it
            self._restore_process_state(folder)
        stage = None
        stage_times = dict(state.get("stage_seconds", {}))
        for idx in range(state["stage"], len(cfg.stages)):
            scfg = cfg.stages[idx]
            stage = get_stage(scfg.name)(self.ctx, scfg, idx)
            stage.setup()
            start = state["step"] if idx == state["stage"] else 0
            # folder is None again after the resumed stage (the next one starts from its boundary)
            if mid_stage and folder is not None and idx == state["stage"]:
                # The interrupted run set this stage up before it saved, so its RNG states and optimizers
                # are restored after setup (a discriminator's init draws from the global RNG).
                self._restore_process_state(folder)
                stage.load_state_dict(ckpt.read_part(folder, "stage")[0])
            else:
                reset_state(self.optimizer)
            base_lr = scfg.lr if scfg.lr is not None else cfg.optim.lr
            lr_scheduler = build_lr_scheduler(self.optimizer, cfg.optim, base_lr, scfg.steps, start)
            t0 = time.time()
            bar = self._progress(scfg, idx, start)
            for step in range(start, scfg.steps):
                lr = lr_scheduler.get_last_lr()[0]
                for _ in range(cfg.grad_accum):
                    batch = self.source.next_batch() if stage.wants_data else None
                    with acc.accumulate(self.unet):
                        logs = stage.train_step(batch, step)
                    self._check_finite(logs, idx, step, lr)
                lr_scheduler.step()
                state["global_step"] += 1
                state["step"] = step + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logs.items()})
                if step % cfg.log_every == 0 or step == scfg.steps - 1:
                    self.log({**logs, "lr": lr}, state["global_step"])
                if cfg.sample.every and state["global_step"] % cfg.sample.every == 0:
                    self._tb_grid(stage, state["global_step"])
                if cfg.checkpoint_every and step + 1 < scfg.steps and state["global_step"] % cfg.checkpoint_every == 0:
                    self._save(
                        stage,
                        {
                            "stage": idx,
                            "step": step + 1,
                            "global_step": state["global_step"],
                            "stage_seconds": stage_times,
                        },
                    )
            if bar is not None:
                bar.close()
            stage_times[f"{idx}:{scfg.name}:k{scfg.segments}"] = round(time.time() - t0, 1)
            self._export(stage, f"stage{idx + 1}_{scfg.name}_k{scfg.segments}", last=False)
            self._tb_grid(stage, state["global_step"])
            state = {"stage": idx + 1, "step": 0, "global_step": state["global_step"], "stage_seconds": stage_times}
            self._save(stage, state)
            folder = None
        if stage is None:  # resumed a finished run
            stage = get_stage(cfg.stages[-1].name)(self.ctx, cfg.stages[-1], len(cfg.stages) - 1)
            stage.setup()
        paths = self._export(stage, "hypersd_lora", last=True)
        self.results.update({"lora": paths, "stage_seconds": stage_times})
        from accelerate.utils import gather_object

        data_stats = gather_object([self.source.stats()]) if acc.num_processes > 1 else [self.source.stats()]
        self.results["data"] = {
            "per_process": data_stats,  # skipped samples by reason, per process
            "skipped": sum(d.get("skipped", 0) for d in data_stats),
        }
        if acc.is_main_process:
            self._final_outputs(stage)
            self.results["total_seconds"] = round(time.time() - t_start, 1)
            _write_json(self.out / "summary.json", self.results, default=str)
            self._print_summary()
        acc.wait_for_everyone()
        acc.end_training()  # closes the trackers
        return self.results

    def _check_finite(self, logs: dict, idx: int, step: int, lr: float) -> None:
        bad = sorted(k for k, v in logs.items() if not math.isfinite(float(v)))
        if not bad:
            return
        last = ckpt.latest_checkpoint(self.out)
        kept = (
            f"the last good checkpoint ({last.name}) is intact" if last is not None else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"stage {idx + 1} step {step + 1}: {', '.join(bad)} became NaN/Inf, so training stopped and nothing was saved "
            f"past it; {kept}. Lower the learning rate (now {lr:g}) and rerun, e.g. --resume --allow-config-change "
            f"--set optim.lr={lr / 4:g}"
        )

    def _progress(self, scfg, idx: int, start: int):
        if not (self.cfg.progress and self.acc.is_local_main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=scfg.steps,
            initial=start,
            desc=f"stage {idx + 1}/{len(self.cfg.stages)} {scfg.name} k={scfg.segments}",
        )

    # -- outputs --------------------------------------------------------------------------------
    def _export(self, stage, name: str, last: bool) -> dict:
        self.acc.wait_for_everyone()
        paths = {}
        if self.acc.is_main_process:
            metadata = lora_metadata(
                self.cfg, stage.metadata(), self.model.base_model, self.model.prediction_type, last
            )
            paths = export_lora(
                self.base_unet,
                self.out / ("lora" if not last else ""),
                name,
                metadata,
                self.cfg.export,
                self.cfg.data.resolution or self.model.resolution,
            )
        self.acc.wait_for_everyone()
        return paths

    def grid_prompts(self) -> list[str]:
        s = self.cfg.sample
        if s.prompts:
            return list(s.prompts)[: s.num] if s.num else list(s.prompts)
        from .digits import caption

        return [caption(d % 10) for d in range(s.num)]

    def _grid_rows(self, stage, seed: int) -> dict:
        s, m = self.cfg.sample, self.model
        prompts = self.grid_prompts()
        shape = (len(prompts), m.unet.config.in_channels, m.unet.config.sample_size, m.unet.config.sample_size)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.acc.device)
        return sample_grid_rows(
            self.base_unet,
            lambda: self.teacher(local=True),
            stage.sampling_context,
            self.conditioner,
            prompts,
            noise,
            student_steps=s.steps,
            teacher_steps=s.teacher_steps,
            teacher_cfg=s.teacher_cfg,
            student_cfg=s.cfg,
            eta=s.eta,
            schedule=m.schedule,
            prediction_type=m.prediction_type,
            decode=self.decode,
            onestep_timestep=onestep_timestep(self.cfg, stage.metadata(), stage.index == len(self.cfg.stages) - 1),
        )

    def _tb_grid(self, stage, step: int) -> None:
        if not self.acc.trackers:
            return
        rows = self._grid_rows(stage, self.cfg.sample.seed)
        log_image(self.acc, "samples", grid_image(rows), step)

    def _final_outputs(self, stage) -> None:
        rows = self._grid_rows(stage, self.cfg.sample.seed)
        self.results["grid"] = save_grid(rows, self.out / "samples.png")
        if self.cfg.eval.enabled:
            from .evaluate import evaluate_digits

            metrics = evaluate_digits(self, stage)
            self.results["metrics"] = str(self.out / "metrics.json")
            _write_json(self.out / "metrics.json", metrics)
            self.metrics = metrics

    def _print_summary(self) -> None:
        print(
            f"\nLoRA (kohya): {self.results['lora'].get('kohya')}\nLoRA (diffusers): {self.results['lora'].get('diffusers')}"
        )
        print(f"sample grid: {self.results.get('grid')}")
        m = getattr(self, "metrics", None)
        if m:
            from .evaluate import format_table

            print(format_table(m))
        print(f"total time: {self.results.get('total_seconds')} s")
