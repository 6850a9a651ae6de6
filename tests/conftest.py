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
