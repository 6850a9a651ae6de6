"""Hyper-SD training: TSCD progressive distillation (and later stages) from the command line.

Run ``python -m train --preset embedded --output outputs/embedded``; see ``train/cli.py``.
"""
