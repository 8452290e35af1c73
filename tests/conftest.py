"""Shared test settings: small thread count so the suite behaves the same on any machine."""

import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
