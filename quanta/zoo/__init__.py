"""Model definitions for real pretrained checkpoints (weights are never downloaded: pass a local path)."""

from quanta.zoo.data import cifar10_sample, mnist_test
from quanta.zoo.lenet import LeNet5
from quanta.zoo.resnet_cifar import ResNetCifar, resnet_cifar
from quanta.zoo.weights import ZOO_MODELS, build, load_pretrained

__all__ = [
    "ZOO_MODELS",
    "LeNet5",
    "ResNetCifar",
    "build",
    "cifar10_sample",
    "load_pretrained",
    "mnist_test",
    "resnet_cifar",
]
