from .backbones import ResNet18, SmallCNN, build_backbone
from .heads import MLPHead, prediction_head, projection_head
from .io import backbone_from_config, backbone_info, backbone_kwargs, load_backbone, save_backbone
from .vit import ViT

__all__ = ["ResNet18", "SmallCNN", "build_backbone", "MLPHead", "prediction_head", "projection_head",
           "backbone_from_config", "backbone_info", "backbone_kwargs", "load_backbone", "save_backbone", "ViT"]
