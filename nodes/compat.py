"""The one place the pack touches ComfyUI's node API: the pinned V3 version.

``comfy_api.v0_0_2`` is the newest numbered API in ComfyUI v0.8.0; ``latest`` changes without
notice. Use only Schema fields v0.8.0 knows (its io.Schema rejects later ones).
"""

from comfy_api.v0_0_2 import ComfyExtension, io, ui  # noqa: F401
