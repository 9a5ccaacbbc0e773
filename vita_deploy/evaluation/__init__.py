"""YouTube-VIS evaluation."""
from vita_deploy.evaluation.ytvis_eval import YTVISResultsError, evaluate_ytvis, format_metrics

__all__ = ["YTVISResultsError", "evaluate_ytvis", "format_metrics"]
