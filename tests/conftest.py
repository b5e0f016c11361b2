"""Shared pytest settings: one torch thread per test process (the machine has 2 cores)."""

import torch

torch.set_num_threads(1)
