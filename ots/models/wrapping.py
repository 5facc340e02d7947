"""What wraps a network at run time (DDP, ``torch.compile``) and the plain module under it."""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap"]


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module
