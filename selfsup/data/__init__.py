from .batches import BatchComposer, batch_composer, known_labels, labelled_subset
from .build import conform, has_test_split, load_datasets, open_chunk, open_lazy
from .lazy import ConcatImages, LazyImages, concat_images
from .loader import BatchPlan, StepBatch, epoch_order, image_batches, step_batches
from .registry import SOURCES, Source, check_source, load_source, source_named
from .sources import (FMNIST_CLASSES, ImageDataset, cifar, digits, fashion_mnist, image_folder, npz, read_idx,
                      train_val_split, webdataset_shard)

__all__ = ["BatchComposer", "BatchPlan", "ConcatImages", "LazyImages", "concat_images", "open_chunk", "StepBatch",
           "conform", "epoch_order", "open_lazy", "image_batches", "step_batches", "FMNIST_CLASSES", "ImageDataset",
           "SOURCES", "Source", "batch_composer", "check_source", "cifar", "digits", "fashion_mnist",
           "has_test_split", "image_folder", "known_labels", "labelled_subset", "load_datasets", "load_source",
           "npz", "read_idx", "source_named", "train_val_split", "webdataset_shard"]
