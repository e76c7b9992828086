"""Data layer: readers, synthetic data, augmentation, splits and checks, the training data assembly and its
configs, the torch datasets (mouaadnet.data.dataset), the sample photos of pip packages (samples).

Nothing is re-exported here: importing one module (e.g. ``samples`` in an app's process) must not import torch.
"""
