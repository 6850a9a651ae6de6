"""One top-level function taken from a ComfyUI source file, without importing ComfyUI's modules
(they pull in the whole app): parse the file, compile that function alone, bind its globals."""

from __future__ import annotations

import ast
import builtins
import types
from pathlib import Path


def comfy_function(path: Path, name: str, namespace: dict):
    """The function ``name`` defined at the top of ``path``, with ``namespace`` as its globals.
    Default values must be literals (they are read with ast.literal_eval)."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    module = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
    code = next(c for c in module.co_consts if isinstance(c, types.CodeType) and c.co_name == name)
    defaults = tuple(ast.literal_eval(d) for d in node.args.defaults) or None
    return types.FunctionType(code, {"__builtins__": builtins, **namespace}, name, defaults)
