"""Load one node-pack folder into a fresh ComfyUI (run with cwd = the ComfyUI tree) and report,
as JSON on the last line: whether it loaded, the node ids it registered, the config ComfyUI
parsed from its pyproject.toml, and what its scheduler node computes on
ComfyUI's SD1.5 noise schedule.

Usage: python load_pack.py <pack folder>
"""

import asyncio
import json
import sys

PACK = sys.argv[1]
sys.argv = sys.argv[:1]
sys.path.insert(0, ".")

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import utils.install_util  # noqa: E402,F401  (ComfyUI's utils package before comfy/utils.py shadows it)
import nodes  # noqa: E402

asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
ok = asyncio.run(nodes.load_custom_node(PACK))
module = "custom_nodes." + PACK.rstrip("/").rsplit("/", 1)[-1]
ids = sorted(k for k, c in nodes.NODE_CLASS_MAPPINGS.items() if getattr(c, "RELATIVE_PYTHON_MODULE", None) == module)

from comfy_config import config_parser  # noqa: E402

config = config_parser.extract_node_configuration(PACK)

import types  # noqa: E402

import comfy.model_base  # noqa: E402
import comfy.supported_models as sm  # noqa: E402

# The SD1.5 noise schedule exactly as ComfyUI builds it for an SD1.5 checkpoint (no weights needed).
sampling = comfy.model_base.model_sampling(sm.SD15({}), comfy.model_base.ModelType.EPS)
model = types.SimpleNamespace(get_model_object=lambda name: sampling, model_options={})
sigmas = nodes.NODE_CLASS_MAPPINGS["HyperSDScheduler"].execute(model, 4, "tcd", 1.0).args[0]
print(
    json.dumps(
        {
            "loaded": ok,
            "ids": ids,
            "name": config.project.name,
            "version": config.project.version,
            "publisher": config.tool_comfy.publisher_id,
            "sigmas": [round(float(s), 4) for s in sigmas],
        }
    )
)
