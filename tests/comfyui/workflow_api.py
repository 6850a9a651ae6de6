"""UI-format workflow (what the frontend saves: nodes, links, widgets_values) -> API prompt.

Widget values are matched to input names in schema order (required, then optional) from
/object_info; an INT widget with control_after_generate is followed by its control value
("fixed", "randomize", ...) in widgets_values. Notes are dropped, Reroute nodes followed, and
frontend-only PrimitiveNodes folded into the widget they feed (whose value is saved there too).
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
MUTED, BYPASSED = 2, 4


class WorkflowError(ValueError):
    pass


def widget_inputs(schema: dict) -> list[tuple[str, dict, str]]:
    """(name, options, type) for each widget input of a node schema, in widgets_values order."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (schema.get("input", {}).get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            kind = "COMBO" if isinstance(typ, list) else typ
            if kind in WIDGET_TYPES and not opts.get("forceInput"):
                out.append((name, opts, kind))
    return out


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("subgraphs are not supported by this converter")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {l[0]: l for l in workflow.get("links", [])}  # [id, src, src_slot, dst, dst_slot, type]

    def source(link_id):
        """(node id, slot) feeding a link, through Reroutes; None for a PrimitiveNode."""
        _, src, slot = links[link_id][:3]
        node = nodes[src]
        if node["type"] == "Reroute":
            upstream = node["inputs"][0].get("link")
            return None if upstream is None else source(upstream)
        if node["type"] == "PrimitiveNode":
            return None
        if node.get("mode", 0) in (MUTED, BYPASSED):
            raise WorkflowError(f"node {src} ({node['type']}) is muted or bypassed but feeds another node")
        return str(src), slot

    prompt = {}
    for nid, node in nodes.items():
        typ = node["type"]
        if typ in FRONTEND_ONLY or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        if typ not in object_info:
            raise WorkflowError(f"node {nid}: type {typ!r} is not registered in this ComfyUI")
        inputs = _widget_values(node, object_info[typ])
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                src = source(inp["link"])
                if src is not None:
                    inputs[inp["name"]] = [src[0], src[1]]
        prompt[str(nid)] = {"class_type": typ, "inputs": inputs}
    return prompt


def _widget_values(node: dict, schema: dict) -> dict:
    values = node.get("widgets_values") or []
    widgets = widget_inputs(schema)
    if isinstance(values, dict):
        return {name: values[name] for name, _, _ in widgets if name in values}
    out, i = {}, 0
    for name, opts, kind in widgets:
        if i >= len(values):
            raise WorkflowError(f"node {node['id']} ({node['type']}): no widget value for input {name!r}")
        out[name] = values[i]
        i += 1
        has_control = opts.get("control_after_generate") or name in ("seed", "noise_seed")
        if kind == "INT" and has_control and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
    return out
