"""Proxy datasets, held in device memory: images (`images.py`: Fashion-MNIST, CIFAR-10 and a
synthetic set, augmented on the device). Every problem with the data is a `DatasetError`."""
from evaluators.datasets.base import DatasetError, cache_dir
from evaluators.datasets.images import (CIFAR10_TEST, CIFAR10_TRAIN, DATASET_NAMES, SYSTEM_FASHION_MNIST,
                                        BatchStream, ImageDataset, load_dataset, make_synthetic,
                                        read_cifar_bin, read_idx)

__all__ = ["CIFAR10_TEST", "CIFAR10_TRAIN", "DATASET_NAMES", "SYSTEM_FASHION_MNIST", "BatchStream",
           "DatasetError", "ImageDataset", "cache_dir", "load_dataset", "make_synthetic", "read_cifar_bin",
           "read_idx"]
