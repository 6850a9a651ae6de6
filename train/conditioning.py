"""Prompt -> UNet conditioning (SD1.5 / embedded: CLIP last hidden state; SDXL: both encoders'
penultimate states, pooled embeddings and size ids), with an in-memory cache per caption."""

from __future__ import annotations

import torch


class TextConditioner:
    def __init__(self, text_encoders: list, tokenizers: list, device, dtype=torch.float32, resolution: int = 1024,
                 memo: bool = True):
        self.encoders, self.tokenizers = text_encoders, tokenizers
        self.device, self.dtype, self.resolution = torch.device(device), dtype, resolution
        self.memo: dict[str, tuple] | None = {} if memo else None

    @property
    def sdxl(self) -> bool:
        return len(self.encoders) == 2

    @torch.no_grad()
    def _encode_raw(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        states, pooled = [], None
        for enc, tok in zip(self.encoders, self.tokenizers):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(enc.device)
            if self.sdxl:
                out = enc(ids, output_hidden_states=True)
                states.append(out.hidden_states[-2])
                pooled = out[0]  # CLIPTextModelWithProjection (the second encoder): text_embeds
            else:
                states.append(enc(ids)[0])
        return torch.cat(states, dim=-1), pooled

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
        r = self.resolution
        ids = torch.tensor([r, r, 0, 0, r, r], dtype=self.dtype, device=self.device).expand(hidden.shape[0], 6)
        return hidden, {"text_embeds": pooled.to(self.device, self.dtype), "time_ids": ids}

    def uncond(self, n: int) -> tuple[torch.Tensor, dict | None]:
        h, added = self.encode([""])
        return h.expand(n, *h.shape[1:]), None if added is None else {k: v.expand(n, *v.shape[1:]) for k, v in added.items()}
