"""The method zoo: one small file per method. ``METHODS`` maps a config name to its class; :func:`build_method`
builds the configured one on a fresh backbone."""
from __future__ import annotations

from pydantic import ValidationError

from ..config import Config, format_error, register_check
from ..errors import ConfigError
from ..models import backbone_from_config
from .barlow_twins import BarlowTwins
from .base import MethodParams, SSLMethod
from .byol import BYOL
from .dcl import DCL, DCLW
from .dino import DINO
from .ibot import IBOT
from .ijepa import IJEPA
from .mae import MAE
from .mmcr import MMCR
from .moco import MoCo
from .moco_v3 import MoCoV3
from .msn import MSN
from .nnclr import NNCLR
from .sat import SelfAdaptiveSSL
from .simclr import SimCLR
from .simsiam import SimSiam
from .supcon import SupCon
from .suncet import SuNCEt
from .swav import SwAV
from .tico import TiCo
from .vicreg import VICReg
from .wmse import WMSE

METHODS: dict[str, type[SSLMethod]] = {m.name: m for m in (
    SimCLR, MoCo, BYOL, SimSiam, BarlowTwins, VICReg, SelfAdaptiveSSL, MoCoV3, NNCLR, DCL, DCLW, WMSE, TiCo, SupCon,
    SwAV, DINO, SuNCEt, MAE, IBOT, IJEPA, MSN, MMCR)}

DESCRIPTIONS = {
    "simclr": "NT-Xent contrastive loss over 2N views (Chen et al. 2020)",
    "moco": "MoCo v2: momentum key encoder + queue of negatives (Chen et al. 2020)",
    "byol": "BYOL: EMA target network + predictor, no negatives (Grill et al. 2020)",
    "simsiam": "SimSiam: stop-gradient + predictor, no target network (Chen & He 2021)",
    "barlow_twins": "Barlow Twins: cross-correlation matrix to identity (Zbontar et al. 2021)",
    "vicreg": "VICReg: variance-invariance-covariance regularisation (Bardes et al. 2022)",
    "sat": "self-adaptive training, SSL: per-sample EMA targets instead of a momentum network (Huang et al.)",
    "moco_v3": "MoCo v3: momentum encoder + predictor, symmetric InfoNCE over the batch, no queue (Chen et al. 2021)",
    "nnclr": "NNCLR: nearest neighbour from a support queue as the positive (Dwibedi et al. 2021)",
    "dcl": "DCL: NT-Xent without the positive in the denominator (Yeh et al. 2022)",
    "dclw": "DCLW: DCL with von Mises-Fisher weighting of the positives (Yeh et al. 2022)",
    "wmse": "W-MSE: Cholesky whitening of sub-batches, then MSE between positives (Ermolov et al. 2021)",
    "tico": "TiCo: invariance to a momentum encoder + contrast against a running covariance (Zhu et al. 2022)",
    "supcon": "SupCon: supervised contrastive, L_out, for labelled data (Khosla et al. 2020)",
    "swav": "SwAV: swapped prediction of Sinkhorn-Knopp codes over learned prototypes (Caron et al. 2020)",
    "dino": "DINO: self-distillation from a centred, sharpened EMA teacher over K prototypes (Caron et al. 2021)",
    "suncet": "SuNCEt: NT-Xent + a supervised contrastive term over the labelled images (Assran et al. 2020)",
    "mae": "MAE: a ViT encodes a quarter of the patches, a light decoder predicts the masked rest (He et al. 2022)",
    "ibot": "iBOT: DINO's [CLS] loss + self-distillation of masked patch tokens on the ViT (Zhou et al. 2022)",
    "ijepa": "I-JEPA: a predictor maps a context block to an EMA encoder's features of target blocks (Assran et al. "
             "2023)",
    "msn": "MSN: a patch-dropped ViT anchor matches an EMA target's sharpened prototype assignment, me-max "
           "(Assran et al. 2022); PMSN's power-law prior as an option",
    "mmcr": "MMCR: maximise the nuclear norm of the per-image view centroids, momentum encoder (Yerxa et al. 2023)",
}

def method_params(cfg: Config) -> MethodParams:
    """The configured method's hyper-parameters (``method`` minus its name), validated by its ``Params``."""
    return METHODS[cfg.method["name"]].Params(**{k: v for k, v in cfg.method.items() if k != "name"})


@register_check
def check_method(cfg: Config) -> None:
    """The config's method exists, takes its parameters and fits the rest of the config (views, labels, batch,
    encoder); else ConfigError naming the key."""
    name = cfg.method["name"]
    if name not in METHODS:
        raise ConfigError(f"config error: method.name: unknown method {name!r} (choose {', '.join(METHODS)})")
    cls = METHODS[name]
    if cfg.augment.local_crops and not cls.multi_crop:
        takers = ", ".join(n for n, c in METHODS.items() if c.multi_crop)
        raise ConfigError(f"config error: augment.local_crops: {name} takes no multi-crop views (set it to 0; "
                          f"methods that do: {takers})")
    try:
        params = method_params(cfg)
    except ValidationError as e:
        raise ConfigError("config error: " + format_error(e, "method.")) from None
    if cfg.data.labelled_fraction is not None and cls.uses_labels and not cls.accepts_unlabelled:
        raise ConfigError(f"config error: method {name} needs every training label but data.labelled_fraction "
                          f"leaves some unknown (method suncet accepts unlabelled images)")
    problem = cls.check_batch(params, cfg.train.batch_size) or cls.check_model(params, cfg.model)
    if problem:
        raise ConfigError("config error: " + problem)


def build_method(cfg: Config, in_channels: int, num_samples: int = 0, image_size: int | None = None) -> SSLMethod:
    """The configured method on a fresh backbone for images of side ``image_size`` (a ResNet's ``stem: auto``
    depends on it); methods with per-sample state get ``num_samples``."""
    backbone = backbone_from_config(cfg.model, in_channels, image_size)
    cls = METHODS[cfg.method["name"]]
    if cls.uses_indices:
        return cls(backbone, method_params(cfg), num_samples=num_samples)
    return cls(backbone, method_params(cfg))


__all__ = ["build_method", "check_method", "method_params", "METHODS", "DESCRIPTIONS", "SSLMethod", "SimCLR", "MoCo",
           "BYOL", "SimSiam", "BarlowTwins",
           "VICReg", "SelfAdaptiveSSL", "MoCoV3", "NNCLR", "DCL", "DCLW", "WMSE", "TiCo", "SupCon", "SwAV", "DINO",
           "SuNCEt", "MAE", "IBOT", "IJEPA", "MSN", "MMCR"]
