"""Defaults that adapt to the collection: for an image folder (``data.source=folder``) the keys a user did not set
are fitted to its number of training images before the run starts, and recorded in the run's ``config.yaml`` (so a
resume computes the same run):

- ``train.batch_size``: at most a quarter of the training images (at least 2, a multiple of the processes), so an
  epoch has at least 4 steps;
- ``train.epochs`` (when ``train.max_steps`` is unset): raised so the run has at least :data:`MIN_STEPS` steps;
- ``log.every_steps``: ``max(1, total_steps // 50)``, never above :data:`LOG_EVERY` (today's interval), so the
  loss and learning-rate curves have at least 50 points.

Other sources (Fashion-MNIST, npz, ...) keep their keys as set; their metrics rows stay every :data:`LOG_EVERY`
steps. A key set in the config or as an override is kept; a batch larger than the collection is refused (it cannot
run), as is a collection of fewer than 2 images."""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from ..errors import DataError

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("selfsup")

LOG_EVERY = 10  # metrics rows every 10 steps (and at the last) unless log.every_steps says otherwise
MIN_STEPS = 50  # a folder's run trains at least this many steps unless its length was set
CURVE_POINTS = 50  # a folder's run logs at least this many rows (a run of at least as many steps)
ADAPTED_SOURCES = ("folder",)


def log_every(cfg: "Config") -> int:
    """The metrics-row interval of a run: ``log.every_steps``, else :data:`LOG_EVERY`."""
    return cfg.log.every_steps or LOG_EVERY


def adapt_to_collection(cfg: "Config", n_images: int, world: int = 1) -> "Config":
    """``cfg`` with the batch size, epochs and logging interval fitted to ``n_images`` training images (see the
    module's docstring); ``cfg`` itself when its source is not a folder."""
    if cfg.data.source not in ADAPTED_SOURCES:
        return cfg
    if n_images < 2:
        raise DataError(f"{cfg.data.root}: {n_images} training image(s); training needs at least 2")
    t, changed = cfg.train, {}
    if "batch_size" not in t.model_fields_set and t.batch_size > n_images // 4:
        batch = max(2, n_images // 4)
        changed["batch_size"] = max(world, batch // world * world)
    batch = changed.get("batch_size", t.batch_size)
    steps_per_epoch = max(1, n_images // batch)
    if t.max_steps is None and "epochs" not in t.model_fields_set and t.epochs * steps_per_epoch < MIN_STEPS:
        changed["epochs"] = float(math.ceil(MIN_STEPS / steps_per_epoch))
    total = t.max_steps or max(1, round(changed.get("epochs", t.epochs) * steps_per_epoch))
    every = cfg.log.every_steps or min(LOG_EVERY, max(1, total // CURVE_POINTS))
    if changed:
        log.warning("%s: %d training images: %s (set these keys to choose)", cfg.data.root, n_images,
                    ", ".join(f"train.{k}={v:g}" for k, v in changed.items()))
    return cfg.model_copy(update={"train": t.model_copy(update=changed),
                                  "log": cfg.log.model_copy(update={"every_steps": every})})
