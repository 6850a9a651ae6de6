"""Launched by test_stages.py under torchrun: a 2-process DMD+feedback run on the tiny model that
writes each rank's LoRA tensors (student and fake adapters) so the test can compare the ranks."""

import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.config import load_config  # noqa: E402
from train.trainer import Trainer  # noqa: E402


def main(config: str, output: str) -> None:
    cfg = load_config("tiny-test", [config], ["eval.enabled=false"], {"output": output})
    trainer = Trainer(cfg)
    trainer.run()  # the LoRA tensors after the run are the ones the final export wrote
    sd = {n: p.detach().contiguous().cpu() for n, p in trainer.base_unet.named_parameters() if "lora_" in n}
    save_file(sd, str(Path(output) / f"rank{trainer.acc.process_index}of{trainer.acc.num_processes}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
