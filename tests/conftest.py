import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    path = Path(os.environ.get("HYPERSD_TOKENIZER", SHARED / "data" / "clip_tokenizer"))
    if not (path / "vocab.json").exists():
        pytest.skip(f"CLIP tokenizer files not found at {path} (set HYPERSD_TOKENIZER)")
    return path


# Folders of small in-process models: one torch thread is many times faster there on a shared
# 2-core CPU. The ComfyUI server tests and the benchmarks keep both cores.
ONE_THREAD_DIRS = {"core", "feedback", "nodes", "realtime", "train"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread(request):
    if request.path.parent.name not in ONE_THREAD_DIRS:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
