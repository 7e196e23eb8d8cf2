from .batches import BatchComposer, batch_composer, known_labels, labelled_subset
from .build import has_test_split, load_datasets
from .replay import ReservoirBuffer
from .sources import (FMNIST_CLASSES, ImageDataset, cifar, digits, fashion_mnist, image_folder, load_source, npz,
                      read_idx, train_val_split, webdataset_shard)

__all__ = ["BatchComposer", "FMNIST_CLASSES", "ImageDataset", "ReservoirBuffer", "batch_composer", "cifar", "digits",
           "fashion_mnist", "has_test_split", "image_folder", "known_labels", "labelled_subset", "load_datasets",
           "load_source", "npz", "read_idx", "train_val_split", "webdataset_shard"]
