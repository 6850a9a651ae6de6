"""Prompt -> UNet conditioning (SD1.5 / embedded: CLIP last hidden state; SDXL: both encoders'
penultimate states, pooled embeddings and size ids), with an in-memory cache per caption."""

from __future__ import annotations

import torch

from hypersd_core.generate import PromptEncoder, sdxl_time_ids


class TextConditioner:
    def __init__(
        self,
        text_encoders: list,
        tokenizers: list,
        device,
        dtype=torch.float32,
        resolution: int = 1024,
        memo: bool = True,
    ):
        self.encoders, self.tokenizers = text_encoders, tokenizers
        self.prompt_encoder = PromptEncoder(tokenizers, text_encoders, "sdxl" if len(text_encoders) == 2 else "sd15")
        self.device, self.dtype, self.resolution = torch.device(device), dtype, resolution
        self.memo: dict[str, tuple] | None = {} if memo else None

    @property
    def sdxl(self) -> bool:
        return len(self.encoders) == 2

    @torch.no_grad()
    def _encode_raw(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = [i.to(enc.device) for i, enc in zip(self.prompt_encoder.tokenize(prompts), self.encoders)]
        out = self.prompt_encoder.encode_ids(*ids)
        return out["encoder_hidden_states"], out.get("text_embeds")

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, dict | None]:
        """(encoder_hidden_states, added_cond_kwargs or None) on the training device."""
        if self.memo is not None:
            todo = sorted({p for p in prompts if p not in self.memo})
            if todo:
                h, pooled = self._encode_raw(todo)
                for i, p in enumerate(todo):
                    self.memo[p] = (h[i].cpu(), None if pooled is None else pooled[i].cpu())
            h = torch.stack([self.memo[p][0] for p in prompts])
            pooled = torch.stack([self.memo[p][1] for p in prompts]) if self.sdxl else None
        else:
            h, pooled = self._encode_raw(prompts)
        return self.pack(h, pooled)

    def pack(self, hidden: torch.Tensor, pooled: torch.Tensor | None) -> tuple[torch.Tensor, dict | None]:
        hidden = hidden.to(self.device, self.dtype)
        if not self.sdxl:
            return hidden, None
        ids = sdxl_time_ids(self.resolution, self.resolution, hidden.shape[0], self.device, self.dtype)
        return hidden, {"text_embeds": pooled.to(self.device, self.dtype), "time_ids": ids}

    def uncond(self, n: int) -> tuple[torch.Tensor, dict | None]:
        h, added = self.encode([""])
        return h.expand(n, *h.shape[1:]), None if added is None else {
            k: v.expand(n, *v.shape[1:]) for k, v in added.items()
        }
