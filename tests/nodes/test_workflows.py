"""Every workflow in workflows/ is a UI-format graph that ComfyUI's frontend can load: node types
exist, widget values fit the node schemas, links are consistent, and the notes name the files."""

import json
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FILE_CHOICES = {"lora_name"}  # lists of the user's files: checked by the prompt-validation test below
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"}


def load(path):
    return json.loads(path.read_text())


def schema_inputs(cls):
    """[(name, type, options, optional)] in the order the frontend builds widgets and sockets."""
    spec = cls.INPUT_TYPES()
    return [
        (name, s[0], s[1] if len(s) > 1 else {}, group == "optional")
        for group in ("required", "optional")
        for name, s in spec.get(group, {}).items()
    ]


def is_widget(typ, opts):
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")


def expected_widgets(cls):
    """(name, type, options) per serialised widget value, with the frontend's extra widgets."""
    out = []
    for name, typ, opts, _ in schema_inputs(cls):
        if not is_widget(typ, opts):
            continue
        out.append((name, typ, opts))
        if opts.get("control_after_generate"):
            out.append((name + ":control_after_generate", "CONTROL", {}))
        if opts.get("image_upload"):
            out.append((name + ":upload", "UPLOAD", {}))
    return out


def check_value(where, typ, opts, value, own):
    if typ == "CONTROL":
        assert value in CONTROL_VALUES, where
    elif typ == "UPLOAD":
        assert value == "image", where
    elif typ == "BOOLEAN":
        assert isinstance(value, bool), where
    elif typ == "STRING":
        assert isinstance(value, str), where
    elif typ in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        if typ == "INT":
            assert float(value).is_integer(), where
        assert opts.get("min", value) <= value <= opts.get("max", value), (
            f"{where}: {value} outside [{opts.get('min')}, {opts.get('max')}]"
        )
    else:  # combo: our own fixed choices here; file lists in test_workflow_passes_comfyui_prompt_validation
        options = typ if isinstance(typ, list) else opts.get("options", [])
        assert isinstance(value, str), where
        if own and options:
            assert value in options, f"{where}: {value!r} not in {options}"


def test_there_is_a_workflow_for_every_case():
    names = {p.stem for p in WORKFLOWS}
    for base in ("sd15", "sdxl"):
        for steps in (1, 2, 4, 8):
            assert f"hypersd_{base}_{steps}step" in names
    assert {"hypersd_sdxl_1step_unet", "hypersd_sd15_img2img", "hypersd_sd15_controlnet"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_matches_the_node_schemas(comfyui, path):
    wf = load(path)
    assert wf["version"] == 0.4 and {
        "nodes",
        "links",
        "groups",
        "config",
        "extra",
        "last_node_id",
        "last_link_id",
    } <= set(wf)
    mappings = comfyui.nodes.NODE_CLASS_MAPPINGS
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and wf["last_node_id"] >= max(nodes)
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(nodes)))
    for n in wf["nodes"]:
        assert NODE_KEYS <= set(n), f"node {n['id']} lacks {NODE_KEYS - set(n)}"
        where = f"{path.name} node {n['id']} ({n['type']})"
        if n["type"] in FRONTEND_ONLY:
            continue
        assert n["type"] in mappings, f"{where}: unknown node type"
        assert n["properties"]["Node name for S&R"] == n["type"]
        cls = mappings[n["type"]]
        own = n["type"].startswith("HyperSD")
        widgets = expected_widgets(cls)
        values = n["widgets_values"]
        assert len(values) == len(widgets), f"{where}: {len(values)} widget values for {[w[0] for w in widgets]}"
        for (name, typ, opts), value in zip(widgets, values):
            check_value(f"{where} widget {name}", typ, opts, value, own and name not in FILE_CHOICES)
        sockets = {
            name: (typ, optional) for name, typ, opts, optional in schema_inputs(cls) if not is_widget(typ, opts)
        }
        for inp in n["inputs"]:
            assert inp["name"] in sockets and inp["type"] == sockets[inp["name"]][0], f"{where}: input {inp}"
        missing = {k for k, (_, opt) in sockets.items() if not opt} - {i["name"] for i in n["inputs"]}
        assert not missing, f"{where}: required inputs {missing} have no socket"
        assert [o["type"] for o in n["outputs"]] == list(cls.RETURN_TYPES), where
        # node order: every input comes from a node that runs earlier
        for inp in n["inputs"]:
            if inp["link"] is not None:
                src = next(l for l in wf["links"] if l[0] == inp["link"])
                assert nodes[src[1]]["order"] < n["order"], f"{where}: order"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_are_consistent(path):
    wf = load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    ids = [l[0] for l in wf["links"]]
    assert len(set(ids)) == len(ids) and wf["last_link_id"] >= max(ids)
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out, inp = nodes[src]["outputs"][src_slot], nodes[dst]["inputs"][dst_slot]
        assert lid in out["links"] and inp["link"] == lid
        assert out["type"] == typ and inp["type"] in (typ, "*"), f"link {lid}: {out['type']} -> {inp['type']}"
    for n in wf["nodes"]:
        for inp in n["inputs"]:
            assert inp["link"] is None or inp["link"] in ids
            assert inp["link"] is not None or inp.get("shape") == 7, (
                f"{path.name}: required input {inp['name']} unlinked"
            )
        for o in n["outputs"]:
            assert all(lid in ids for lid in o["links"] or [])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_note_names_every_model_file_and_cfg(path):
    wf = load(path)
    notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1
    files = [
        v
        for n in wf["nodes"]
        if n["type"] != "MarkdownNote"
        for v in n["widgets_values"]
        if isinstance(v, str) and v.endswith(".safetensors")
    ]
    assert files
    for f in files:
        assert f in notes[0], f"{path.name}: the note does not name {f}"
    for n in wf["nodes"]:
        for m in n["properties"].get("models", []):
            assert m["name"] in n["widgets_values"] and m["url"].endswith("/" + m["name"])
    assert "cfg 1.0" in notes[0]
    samplers = [n for n in wf["nodes"] if n["type"] == "SamplerCustom"]
    assert len(samplers) == 1 and samplers[0]["widgets_values"][3] == 1.0  # cfg 1.0: diffusers guidance 0


def test_comfyui_lists_them_as_the_pack_templates(comfyui):
    """The /workflow_templates route of ComfyUI's CustomNodeManager lists <pack>/workflows/*.json."""
    import asyncio

    from aiohttp import web
    from app.custom_node_manager import CustomNodeManager

    routes = web.RouteTableDef()
    CustomNodeManager().add_routes(routes, web.Application(), [(comfyui.pack.name, str(comfyui.pack))])
    handler = next(r.handler for r in routes if getattr(r, "path", None) == "/workflow_templates")
    listed = json.loads(asyncio.run(handler(None)).text)
    assert sorted(listed[comfyui.pack.name]) == [p.stem for p in WORKFLOWS]


def to_api_prompt(wf, mappings):
    """The API-format prompt the frontend would queue for this UI workflow."""
    links = {l[0]: l for l in wf["links"]}
    prompt = {}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY or n["mode"] != 0:
            continue
        names = [w[0] for w in expected_widgets(mappings[n["type"]])]
        inputs = {name: v for name, v in zip(names, n["widgets_values"]) if ":" not in name}
        for inp in n["inputs"]:
            if inp["link"] is not None:
                _, src, slot, *_ = links[inp["link"]]
                inputs[inp["name"]] = [str(src), slot]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


@pytest.fixture(scope="module")
def model_files(comfyui, tmp_path_factory):
    """Empty stand-ins for every model file the workflows name, in the folders they name."""
    root = tmp_path_factory.mktemp("models")
    for path in WORKFLOWS:
        for n in load(path)["nodes"]:
            for m in n["properties"].get("models", []):
                folder = root / m["directory"]
                folder.mkdir(exist_ok=True)
                (folder / m["name"]).touch()
                comfyui.folder_paths.add_model_folder_path(m["directory"], str(folder))
    return root


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_passes_comfyui_prompt_validation(comfyui, model_files, path):
    """ComfyUI's own validator accepts the prompt the frontend makes of it (types, ranges, file choices)."""
    import asyncio

    import execution

    prompt = to_api_prompt(load(path), comfyui.nodes.NODE_CLASS_MAPPINGS)
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid, (error, node_errors)
    assert any(prompt[o]["class_type"] == "SaveImage" for o in outputs)
