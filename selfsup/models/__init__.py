from .backbones import ResNet18, SmallCNN, build_backbone
from .heads import MLPHead, prediction_head, projection_head

__all__ = ["ResNet18", "SmallCNN", "build_backbone", "MLPHead", "prediction_head", "projection_head"]
