from .backbones import ResNet, ResNet18, ResNet50, SmallCNN, build_backbone, resolve_stem
from .heads import MLPHead, prediction_head, projection_head
from .io import backbone_from_config, backbone_info, backbone_kwargs, load_backbone, readout_backbone, save_backbone
from .normalize import InputNorm
from .vit import ViT, ViTSpec

__all__ = ["ResNet", "ResNet18", "ResNet50", "resolve_stem", "SmallCNN", "build_backbone", "MLPHead", "prediction_head",
           "projection_head", "backbone_from_config", "backbone_info", "backbone_kwargs", "load_backbone",
           "readout_backbone", "save_backbone", "InputNorm", "ViT", "ViTSpec"]
