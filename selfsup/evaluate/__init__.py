from .diagnostics import alignment, collapse_std, linear_cka, rankme, uniformity
from .probes import extract_features, knn_accuracy, knn_predict, linear_probe

__all__ = ["alignment", "collapse_std", "linear_cka", "rankme", "uniformity", "extract_features", "knn_accuracy",
           "knn_predict", "linear_probe"]
