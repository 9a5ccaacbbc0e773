"""YouTube-VIS evaluation (a reimplementation of the official ytvoseval on pycocotools' mask utilities)."""
from vita_deploy.evaluation.ytvis_eval import METRICS, YTVISResultsError, evaluate_ytvis, format_metrics, video_iou

__all__ = ["METRICS", "YTVISResultsError", "evaluate_ytvis", "format_metrics", "video_iou"]
