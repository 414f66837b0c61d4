"""Double of modules/devices.py: the default compute dtype."""

import torch

dtype = torch.float32
