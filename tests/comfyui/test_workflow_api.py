"""The UI -> API workflow converter, on a hand-made workflow (no ComfyUI needed)."""

import pytest

from workflow_api import WorkflowError, ui_to_api

OBJECT_INFO = {
    "Loader": {"input": {"required": {"name": [["a.safetensors", "b.safetensors"], {}]}}},
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"control_after_generate": True}],
                "cfg": ["FLOAT", {}],
                "mode": ["COMBO", {"options": ["x", "y"]}],
            },
            "optional": {"text": ["STRING", {"forceInput": True}], "flag": ["BOOLEAN", {}]},
        }
    },
    "Save": {"input": {"required": {"images": ["IMAGE", {}], "prefix": ["STRING", {}]}}},
}


def _node(nid, typ, widgets=(), inputs=(), mode=0):
    return {
        "id": nid,
        "type": typ,
        "mode": mode,
        "widgets_values": list(widgets),
        "inputs": [{"name": n, "type": t, "link": l} for n, t, l in inputs],
    }


def _workflow():
    nodes = [
        _node(1, "Loader", ["b.safetensors"]),
        _node(2, "Reroute", inputs=[("", "*", 1)]),
        _node(
            3,
            "Sampler",
            [123, "randomize", 7.5, "y", True],
            inputs=[("model", "MODEL", 2), ("cfg", "FLOAT", 3), ("text", "STRING", None)],
        ),
        _node(4, "PrimitiveNode", [7.5]),
        _node(5, "Save", ["out"], inputs=[("images", "IMAGE", 4)]),
        _node(6, "Note", ["read me"]),
        _node(7, "Save", ["muted"], mode=2),
    ]
    links = [[1, 1, 0, 2, 0, "MODEL"], [2, 2, 0, 3, 0, "MODEL"], [3, 4, 0, 3, 1, "FLOAT"], [4, 3, 0, 5, 0, "IMAGE"]]
    return {"nodes": nodes, "links": links}


def test_widgets_links_reroutes_primitives_and_notes():
    api = ui_to_api(_workflow(), OBJECT_INFO)
    assert api == {
        "1": {"class_type": "Loader", "inputs": {"name": "b.safetensors"}},
        "3": {
            "class_type": "Sampler",
            "inputs": {"model": ["1", 0], "seed": 123, "cfg": 7.5, "mode": "y", "flag": True},
        },
        "5": {"class_type": "Save", "inputs": {"images": ["3", 0], "prefix": "out"}},
    }


def test_unknown_node_type_is_named():
    wf = _workflow()
    wf["nodes"][0]["type"] = "MissingNode"
    with pytest.raises(WorkflowError, match="MissingNode"):
        ui_to_api(wf, OBJECT_INFO)


def test_missing_widget_value_is_named():
    wf = _workflow()
    wf["nodes"][2]["widgets_values"] = [1, "fixed"]
    with pytest.raises(WorkflowError, match="'cfg'"):
        ui_to_api(wf, OBJECT_INFO)
