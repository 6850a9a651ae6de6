"""Hyper-SD for ComfyUI: hands the V3 extension to ComfyUI's custom-node loader.

ComfyUI loads this folder by path, so everything inside the pack is imported relatively; the
core library is the pack's own ``hypersd_core`` subpackage. No NODE_CLASS_MAPPINGS here: it
would shadow the V3 entrypoint.
The web/ folder holds a small frontend extension (old saved loader values -> strength_mode).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import HyperSDExtension

    return HyperSDExtension()
