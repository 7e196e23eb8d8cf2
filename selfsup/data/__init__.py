from .sources import (FMNIST_CLASSES, ImageDataset, cifar, digits, fashion_mnist, image_folder, load_source, npz,
                      read_idx, train_val_split)

__all__ = ["FMNIST_CLASSES", "ImageDataset", "cifar", "digits", "fashion_mnist", "image_folder", "load_source", "npz",
           "read_idx", "train_val_split"]
