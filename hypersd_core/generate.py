"""Real-time prompt -> image generation from already-built components (one step or a few).

Duck-typed, so this module imports neither diffusers nor transformers:
- ``unet``: a callable with diffusers' ``UNet2DConditionModel`` signature
  ``unet(x, t, encoder_hidden_states=..., added_cond_kwargs=..., return_dict=False)[0]``;
- :class:`PromptEncoder`: CLIP-style tokenizers and text encoders (one for SD1.5, two for SDXL);
- ``decoder``: latents -> image in [-1, 1] (a VAE or AutoencoderTiny decode), or None (pixels).

Speed path: prompt embeddings cached per prompt (a new prompt costs one text-encoder call, an
unchanged one none); static input buffers per (batch, height, width); sampling + decoding in one
function with no host syncs, which ``torch.compile(mode="reduce-overhead")`` turns into CUDA
graph replays on a GPU. Without CUDA the compile request is logged and the path runs eager.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .capture import CUDA_GRAPH_MODES, GuardedCompile
from .parameterization import DiscreteVPDenoiser
from .samplers import check_eta, get_sigmas_onestep, get_sigmas_tscd, sample_dmd_onestep, sample_tscd
from .schedule import VPSchedule, unit_noise_to_ve

log = logging.getLogger(__name__)


class PromptEncoder:
    """Prompt -> conditioning tensors with CLIP-style tokenizers and encoders.

    kind="sd15": last hidden state of one encoder (``encoder_hidden_states``).
    kind="sdxl": penultimate hidden states of both encoders concatenated, plus the second
    (projection) encoder's pooled ``text_embeds``, as diffusers' SDXL pipeline does.
    """

    def __init__(self, tokenizers: Sequence, text_encoders: Sequence, kind: str = "sd15"):
        if kind not in ("sd15", "sdxl"):
            raise ValueError(f"kind must be 'sd15' or 'sdxl', got {kind!r}")
        need = 1 if kind == "sd15" else 2
        if len(tokenizers) != need or len(text_encoders) != need:
            raise ValueError(
                f"kind={kind!r} needs {need} tokenizer(s) and text encoder(s), "
                f"got {len(tokenizers)} and {len(text_encoders)}"
            )
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.kind = kind

    @property
    def device(self) -> torch.device:
        return next(self.text_encoders[0].parameters()).device

    def tokenize(self, prompt: str | Sequence[str]) -> list[torch.Tensor]:
        """Token ids (batch, max_length) per tokenizer, on the CPU (batch 1 for one prompt)."""
        return [
            tok(
                prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            for tok in self.tokenizers
        ]

    def encode_ids(self, *ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Conditioning tensors from token ids (pure tensor code: the compile target)."""
        if self.kind == "sd15":
            return {"encoder_hidden_states": self.text_encoders[0](ids[0])[0]}
        hidden = []
        out = None
        for enc, i in zip(self.text_encoders, ids):
            out = enc(i, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}


def sdxl_time_ids(height: int, width: int, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """SDXL's added size conditioning per sample: original size, crop top-left (0, 0), target size
    (diffusers' ``add_time_ids`` for an uncropped image generated at its own size)."""
    ids = torch.tensor([height, width, 0, 0, height, width], device=device, dtype=dtype)
    return ids.expand(batch, 6)


class UNetNet(torch.nn.Module):
    """A diffusers-signature UNet as a VP network ``net(x, t, **cond)``: runs in ``dtype`` (None:
    the UNet's parameters' dtype), returns float32 so the sampler math stays in full precision.
    The one UNet wrapper: the Generator, the trainer's sampling and the benchmarks use it.

    ``controlnet``: a callable with diffusers' ``ControlNetModel`` signature; when the conditioning
    holds ``control_image`` (B, C, H, W) in [0, 1] it is called on the same input, and its down/mid
    residuals, times ``control_scale`` (a tensor: one value or one per sample), are added to the
    UNet's. The ControlNet sees the same text embeddings as the UNet (no "guess mode")."""

    def __init__(self, unet: Callable, dtype: Optional[torch.dtype] = None, controlnet: Optional[Callable] = None):
        super().__init__()
        self.unet = unet
        self.dtype = dtype
        self.controlnet = controlnet

    def forward(
        self, x, t, encoder_hidden_states, text_embeds=None, time_ids=None, control_image=None, control_scale=None
    ):
        added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
        dtype = self.dtype or next(self.unet.parameters()).dtype
        extra = {}
        if control_image is not None:
            if self.controlnet is None:
                raise ValueError("a control image was given, but the model has no ControlNet")
            down, mid = self.controlnet(
                x.to(dtype),
                t,
                encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=control_image.to(dtype),
                added_cond_kwargs=added,
                return_dict=False,
            )
            scale = 1.0 if control_scale is None else control_scale.reshape(-1, 1, 1, 1).to(dtype)
            extra = {
                "down_block_additional_residuals": [r * scale for r in down],
                "mid_block_additional_residual": mid * scale,
            }
        out = self.unet(
            x.to(dtype),
            t,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs=added,
            return_dict=False,
            **extra,
        )[0]
        return out.float()


@dataclass
class GeneratorStats:
    text_encoder_calls: int = 0
    prompt_cache_hits: int = 0
    images: int = 0
    last_ms: float = float("nan")
    last_encode_ms: float = 0.0
    # seconds spent on the first calls of each captured (batch, height, width): compile + capture
    capture_s: dict = field(default_factory=dict)
    compile_status: str = "eager"


@dataclass
class _Buffers:
    noise: torch.Tensor
    step_noise: Optional[torch.Tensor]
    cond: dict
    prompt: Optional[str] = None
    calls: int = 0


class Generator:
    """Prompt -> uint8 image (B, H, W, 3) with one or a few Hyper-SD steps.

    ``steps=1`` runs one model call at ``timestep`` (None: 999, ByteDance's unified LoRA; 800 for
    the SDXL 1-step UNet and for LoRAs whose header names it) and returns x0; ``steps>1`` runs the TSCD sampler with ``eta`` and
    ``spacing``. ``controlnet`` (diffusers' ControlNetModel signature, see :class:`UNetNet`) lets
    ``generate`` take a control image and strength. ``compile`` is a torch.compile mode (e.g. "reduce-overhead" = CUDA graphs) or
    None; on a CPU a CUDA-graph mode is logged and skipped unless ``backend`` is a CPU backend.
    """

    def __init__(
        self,
        unet: Callable,
        prompt_encoder: PromptEncoder,
        decoder: Optional[Callable] = None,
        *,
        latent_channels: int = 4,
        vae_scale_factor: int = 8,
        dtype: torch.dtype = torch.float32,
        decoder_dtype: Optional[torch.dtype] = None,
        device: str | torch.device = "cpu",
        schedule: Optional[VPSchedule] = None,
        prediction_type: str = "epsilon",
        steps: int = 1,
        timestep: Optional[int] = None,
        spacing: str = "trailing",
        eta: float = 1.0,
        sdxl: bool = False,
        compile: Optional[str] = None,
        backend: str = "inductor",
        fullgraph: bool = False,
        cache_size: int = 256,
        controlnet: Optional[Callable] = None,
    ):
        self.device = torch.device(device)
        self.dtype = dtype
        self.decoder_dtype = decoder_dtype or dtype
        self.prompt_encoder = prompt_encoder
        self.decoder = decoder
        self.latent_channels = latent_channels
        self.vae_scale_factor = vae_scale_factor
        self.sdxl = sdxl
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.steps = int(steps)
        self.eta = check_eta(eta)
        self.schedule = schedule or VPSchedule.scaled_linear()
        self.controlnet = controlnet
        cfg = getattr(controlnet, "config", None)
        self.control_channels = int(getattr(cfg, "conditioning_channels", None) or 3) if controlnet else 0
        self.denoiser = DiscreteVPDenoiser(UNetNet(unet, dtype, controlnet), self.schedule, prediction_type)
        if self.steps == 1:
            sigmas = get_sigmas_onestep(999 if timestep is None else timestep, self.schedule)
        else:
            sigmas = get_sigmas_tscd(self.steps, self.schedule, spacing=spacing)
        self.sigmas = sigmas.to(self.device)
        # build the schedule's device tables now: created inside a CUDA graph they would live in
        # its memory pool and be overwritten by later replays
        self.schedule.timestep(self.sigmas)
        self.schedule.sigma(torch.zeros((), device=self.device))
        self.cache_size = cache_size
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._buffers: dict[tuple, _Buffers] = {}
        self._gen = torch.Generator(device=self.device)
        self.stats = GeneratorStats()
        self._render = self.render_core
        self._encode = prompt_encoder.encode_ids
        self._cudagraphs = False
        self._compiled = False
        self._setup_compile(compile, backend, fullgraph)

    # -- compilation ---------------------------------------------------------------------------
    def _setup_compile(self, mode: Optional[str], backend: str, fullgraph: bool) -> None:
        if mode is None and backend == "inductor":
            return
        if self.device.type != "cuda" and backend == "inductor" and mode in CUDA_GRAPH_MODES:
            log.warning(
                "compile=%r uses CUDA graphs, which need a CUDA GPU; the device is %s, so "
                "generation runs eager (pass device='cuda' on a GPU)",
                mode,
                self.device,
            )
            self.stats.compile_status = f"eager ({self.device.type}: CUDA graphs need a CUDA GPU)"
            return
        kw = dict(mode=mode if backend == "inductor" else None, backend=backend, fullgraph=fullgraph, max_captures=64)
        self._render = GuardedCompile(self.render_core, "generate: sampler + decoder", **kw)
        self._encode = GuardedCompile(self.prompt_encoder.encode_ids, "generate: text encoder", **kw)
        self._cudagraphs = self.device.type == "cuda" and mode in CUDA_GRAPH_MODES
        self._compiled = True
        self.stats.compile_status = f"compiled ({backend}, mode={mode})"

    def _run(self, which: str, *args):
        """Call the (guarded) compiled function: a compile error logs and runs eager from then on."""
        fn = self._render if which == "render" else self._encode
        out = fn(*args)
        failed = self._compiled and (self._render.failed or self._encode.failed)
        if failed and "compile failed" not in self.stats.compile_status:
            self.stats.compile_status = f"eager (compile failed: {failed.split(':')[0]})"
        return out

    # -- prompts -------------------------------------------------------------------------------
    @torch.no_grad()
    def prompt_embeddings(self, prompt: str) -> dict[str, torch.Tensor]:
        """Cached conditioning for ``prompt``: one text-encoder call the first time, none after."""
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            self.stats.prompt_cache_hits += 1
            return hit
        t0 = time.perf_counter()
        ids = [i.to(self.prompt_encoder.device) for i in self.prompt_encoder.tokenize(prompt)]
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._run("encode", *ids)
        cond = {k: v.detach().to(self.device, self.dtype, copy=True) for k, v in out.items()}
        self.stats.text_encoder_calls += 1
        self.stats.last_encode_ms = (time.perf_counter() - t0) * 1e3
        self._cache[prompt] = cond
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cond

    # -- buffers -------------------------------------------------------------------------------
    def _buffers_for(self, batch: int, height: int, width: int, cond: dict, control: bool = False) -> _Buffers:
        key = (batch, height, width) + (("control",) if control else ())
        buf = self._buffers.get(key)
        if buf is not None:
            return buf
        s = self.vae_scale_factor
        if height % s or width % s:
            raise ValueError(f"height and width must be multiples of {s}, got {height}x{width}")
        shape = (batch, self.latent_channels, height // s, width // s)
        noise = torch.empty(shape, device=self.device)
        step_noise = torch.empty((self.steps - 1,) + shape, device=self.device) if self.steps > 1 else None
        bcond = {
            k: torch.empty((batch,) + tuple(v.shape[1:]), device=self.device, dtype=v.dtype) for k, v in cond.items()
        }
        if self.sdxl:
            bcond["time_ids"] = sdxl_time_ids(height, width, batch, self.device, self.dtype).clone()
        if control:  # a tensor strength: changing it needs no recompilation
            bcond["control_image"] = torch.empty((batch, self.control_channels, height, width), device=self.device)
            bcond["control_scale"] = torch.empty((batch,), device=self.device)
        if self._cudagraphs:
            for t in [noise, step_noise, *bcond.values()]:
                if t is not None:
                    torch._dynamo.mark_static_address(t)
        buf = self._buffers[key] = _Buffers(noise, step_noise, bcond)
        return buf

    # -- the graph-safe core ---------------------------------------------------------------------
    def sample_latents(
        self, noise: torch.Tensor, step_noise: Optional[torch.Tensor], cond: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Unit-variance noise -> x0 latents (float32) with the one-step or TSCD sampler."""
        x = unit_noise_to_ve(noise, self.sigmas[0])
        if self.steps == 1:
            return sample_dmd_onestep(self.denoiser, x, self.sigmas, extra_args=cond, check_inputs=False)
        draws = iter(step_noise.unbind(0))
        return sample_tscd(
            self.denoiser,
            x,
            self.sigmas,
            extra_args=cond,
            eta=self.eta,
            noise_sampler=lambda s, s_next: next(draws),
            schedule=self.schedule,
            check_inputs=False,
        )

    def render_core(
        self, noise: torch.Tensor, step_noise: Optional[torch.Tensor], cond: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise + conditioning -> (uint8 images (B, H, W, 3), whether the decoded image was finite):
        sampler and decoder, no host syncs."""
        with torch.no_grad():
            x0 = self.sample_latents(noise, step_noise, cond)
            img = x0 if self.decoder is None else self.decoder(x0.to(self.decoder_dtype))
            finite = torch.isfinite(img).all()
            img = ((img.float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)
            if img.shape[1] == 1:
                img = img.expand(-1, 3, -1, -1)
            return img.permute(0, 2, 3, 1).contiguous(), finite

    # -- the public call -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        seed: int = 0,
        height: int = 512,
        width: int = 512,
        batch_size: int = 1,
        control_image: Optional[torch.Tensor] = None,
        control_strength: float = 1.0,
    ) -> torch.Tensor:
        """uint8 images (batch, height, width, 3) on the CPU for ``prompt`` and ``seed``.

        ``control_image``: (C, H, W) or (B, C, H, W) floats in [0, 1] at the output's pixel size,
        C the ControlNet's conditioning channels (needs a Generator built with ``controlnet``);
        ``control_strength`` in [0, 2] scales the ControlNet's residuals (0: no control).
        Raises ValueError for unusable arguments and FloatingPointError when the model's output is
        NaN/Inf (a broken LoRA, or fp16 overflow) instead of returning a black image."""
        self._check_call(prompt, seed, height, width, batch_size)
        control = control_image is not None
        if control:
            control_image = self.check_control(control_image, control_strength, height, width, batch_size)
        t0 = time.perf_counter()
        cond = self.prompt_embeddings(prompt)
        buf = self._buffers_for(batch_size, height, width, cond, control)
        if buf.prompt != prompt:
            for k, v in cond.items():
                buf.cond[k].copy_(v.expand_as(buf.cond[k]))
            buf.prompt = prompt
        if control:
            buf.cond["control_image"].copy_(control_image.expand_as(buf.cond["control_image"]))
            buf.cond["control_scale"].fill_(float(control_strength))
        self._gen.manual_seed(int(seed))
        buf.noise.normal_(generator=self._gen)
        if buf.step_noise is not None:
            buf.step_noise.normal_(generator=self._gen)
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        img, finite = self._run("render", buf.noise, buf.step_noise, buf.cond)
        img = img.cpu()
        if not bool(finite):
            raise FloatingPointError(
                "the model produced NaN/Inf for this prompt: the LoRA or model weights are broken, "
                "or fp16 overflowed (try dtype float32 or bfloat16, or another LoRA)"
            )
        ms = (time.perf_counter() - t0) * 1e3
        key = (batch_size, height, width) + (("control",) if control else ())
        if self._compiled and buf.calls < 3:  # dynamo compile, then CUDA-graph warm-up and record
            self.stats.capture_s[key] = self.stats.capture_s.get(key, 0.0) + ms / 1e3
        buf.calls += 1
        self.stats.images += batch_size
        self.stats.last_ms = ms
        return img

    def _check_call(self, prompt, seed, height, width, batch_size) -> None:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        s = self.vae_scale_factor
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v < s or v % s:
                raise ValueError(f"{name} must be a positive multiple of {s}, got {v!r}")

    def check_control(self, image, strength, height: int, width: int, batch_size: int) -> torch.Tensor:
        """The control image as (1 or B, C, H, W) float32 on the device, or ValueError saying what is wrong."""
        if self.controlnet is None:
            raise ValueError(
                "a control image was given, but this generator has no ControlNet (load one: --controlnet PATH)"
            )
        c = self.control_channels
        if not isinstance(image, torch.Tensor):
            raise ValueError(
                f"the control image must be a torch tensor (C, H, W) in [0, 1], got {type(image).__name__}"
            )
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise ValueError(f"the control image must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
        if image.shape[1] != c:
            raise ValueError(
                f"the control image has {image.shape[1]} channel(s); this ControlNet takes {c} "
                f"({'gray' if c == 1 else 'RGB'}), shape ({c}, {height}, {width})"
            )
        if tuple(image.shape[-2:]) != (height, width):
            raise ValueError(
                f"the control image is {image.shape[-1]}x{image.shape[-2]} (WxH); it must match the output "
                f"size {width}x{height}: resize it first"
            )
        if image.shape[0] not in (1, batch_size):
            raise ValueError(f"the control image batch is {image.shape[0]}; give 1 or batch_size={batch_size}")
        if not image.is_floating_point():
            raise ValueError(f"the control image must be floats in [0, 1], got {image.dtype}")
        if not bool(torch.isfinite(image).all()) or float(image.min()) < 0 or float(image.max()) > 1:
            raise ValueError("the control image must hold finite values in [0, 1]")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 2.0:
            raise ValueError(f"control_strength must be a number in [0, 2], got {strength!r}")
        return image.to(self.device, torch.float32)

    def warmup(self, height: int = 512, width: int = 512, batch_size: int = 1, runs: int = 3) -> float:
        """Compile and capture for this shape ahead of time; returns the seconds it took."""
        t0 = time.perf_counter()
        for i in range(runs):
            self.generate("", seed=i, height=height, width=width, batch_size=batch_size)
        return time.perf_counter() - t0
