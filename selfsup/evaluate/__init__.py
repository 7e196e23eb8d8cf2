from .diagnostics import alignment, collapse_std, linear_cka, rankme, uniformity
from .features import extract_features, inference_copy
from .probes import LabelledFeatures, ProbeGrid, knn_accuracy, knn_predict, linear_probe

__all__ = ["alignment", "collapse_std", "linear_cka", "rankme", "uniformity", "extract_features", "inference_copy",
           "knn_accuracy", "knn_predict", "LabelledFeatures", "linear_probe", "ProbeGrid"]
