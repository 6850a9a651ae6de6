"""ComfyUI nodes of the Hyper-SD pack (thin: translate ComfyUI objects, call hypersd_core)."""
