"""Reward models for human-feedback learning, pluggable by name from the config.

Each entry of a config's ``rewards`` list is ``{"name": <one of REWARDS>, "weight": w, **kwargs}``;
:func:`build_reward` builds one entry; the feedback term (``train.stages.feedback.build_stage_rewards``)
builds its list with it, and :func:`build_rewards` gives the weighted sum as one
``hypersd_core.rewards.Reward`` (for scoring images outside training).
Models load from local files only (nothing is downloaded).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from hypersd_core.rewards import Reward, WeightedRewards


def _aesthetic(**kw):
    from .aesthetic import AestheticReward

    return AestheticReward(**kw)


def _imagereward(**kw):
    from .imagereward import ImageRewardModel

    return ImageRewardModel(**kw)


def _segmentation(**kw):
    from .segmentation import SegmentationReward

    return SegmentationReward.from_files(**kw)


def _digits(**kw):
    from .digits import DigitReward

    return DigitReward.from_files(**kw)


REWARDS = {"aesthetic": _aesthetic, "imagereward": _imagereward, "segmentation": _segmentation, "digits": _digits}


def build_reward(spec: Mapping[str, Any] | str, device=None) -> Reward:
    """One reward model from ``{"name": ..., **kwargs}`` (or just its name)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    spec.pop("weight", None)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}")
    try:
        return REWARDS[name](device=device, **spec)
    except TypeError as e:
        raise TypeError(f"reward {name!r}: bad options {sorted(spec)} ({e})") from e


def build_rewards(specs: Sequence[Mapping[str, Any] | str], device=None) -> WeightedRewards:
    """A weighted sum of the configured rewards (weight defaults to 1)."""
    if not specs:
        raise ValueError("the feedback stage needs at least one reward in 'rewards' (e.g. [{name: digits}])")
    pairs = []
    for s in specs:
        weight = 1.0 if isinstance(s, str) else float(s.get("weight", 1.0))
        pairs.append((weight, build_reward(s, device)))
    return WeightedRewards(pairs)
