"""Training: losses (criterion.py), Hungarian matchers (matcher.py), point sampling and the trainer."""
from vita_deploy.training.criterion import (FrameCriterion, VideoCriterion, VitaLoss, build_criterion,
                                            distributed_average)
from vita_deploy.training.matcher import FrameMatcher, VideoMatcher

__all__ = ["FrameCriterion", "VideoCriterion", "VitaLoss", "build_criterion", "distributed_average",
           "FrameMatcher", "VideoMatcher"]
