"""cpu_micro --quick: sampler-overhead and training-step rows with finite values."""

import json
import math

from benchmarks.cpu_micro import main


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_cpu_micro_quick(tmp_path):
    out = tmp_path / "c.json"
    assert main(["--quick", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["machine"]["cpu_model"]
    models = {r["model"] for r in res["inference"]}
    assert models == {"embedded", "sd15-fifth-width"}
    for r in res["inference"]:
        vals = [v for k, v in r.items() if k.endswith(("seconds_per_image", "seconds_per_step", "share_of_step"))]
        assert vals and all(finite(v) for v in vals)
    assert [r["method"] for r in res["training"]] == ["tscd", "lcm_shared", "lcm_copy"]
    assert all(finite(r["samples_per_s"]) and r["samples_per_s"] > 0 for r in res["training"])
    assert "QUICK MODE" in out.with_suffix(".md").read_text()
