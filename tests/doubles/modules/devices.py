"""Double of modules/devices.py: where the model runs (``device``; a test may set the fake GPU of
tests/doubles/fake_gpu.py), the CPU, the default compute dtype, and ``torch_gc``."""

import torch

cpu = torch.device("cpu")
device = cpu
dtype = torch.float32


def torch_gc():
    pass
