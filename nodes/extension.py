"""The pack's ComfyExtension: the list of nodes ComfyUI registers."""

import importlib
import logging

from .compat import ComfyExtension, io

# Optional node groups: (module, what to tell the user if it fails to import).
OPTIONAL_GROUPS = ("realtime",)


class HyperSDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .loader import HyperSDLoraLoader, HyperSDLoraLoaderModelOnly
        from .samplers import HyperSDDMDSampler, HyperSDTSCDSampler
        from .schedulers import HyperSDOneStepScheduler, HyperSDScheduler

        node_list = [
            HyperSDLoraLoader,
            HyperSDLoraLoaderModelOnly,
            HyperSDTSCDSampler,
            HyperSDScheduler,
            HyperSDDMDSampler,
            HyperSDOneStepScheduler,
        ]
        for group in OPTIONAL_GROUPS:
            node_list += _optional_nodes(group)
        return node_list


def _optional_nodes(group: str) -> list:
    """NODES of ``nodes/<group>.py`` if it exists and imports; a warning instead of a broken pack."""
    try:
        module = importlib.import_module(f".{group}", __package__)
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.{group}":
            return []
        logging.warning("Hyper-SD: %s nodes disabled, a dependency is missing: %s", group, e)
        return []
    except Exception as e:  # a broken optional group must not take the pack down
        logging.warning("Hyper-SD: %s nodes disabled, they failed to import: %s", group, e)
        return []
    return list(getattr(module, "NODES", []))
