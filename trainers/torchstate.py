"""The torch settings the toolkit's stages run under, whatever a notebook has set globally.

A notebook's `torch.set_grad_enabled(False)` left over from an inference cell, a `with torch.inference_mode():`
block around a call, or `torch.set_default_dtype(torch.float64)` (common in scientific notebooks) is ordinary
process state. Under it training ends in torch's "element 0 of tensors does not require grad", a float64 model
is built and fed float32 batches, and gradient probes read the missing graph as an embedding lookup. So the
stages that train or take gradients run their block with gradients on, outside inference mode and with float32
as the default dtype, and the notebook's settings are back afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def standard_torch_mode():
    """Gradients enabled, inference mode off and a float32 default dtype inside the block; as they were after."""
    import torch

    dtype = torch.get_default_dtype()
    # inference_mode(False) is the documented way out of an enclosing inference_mode block for a nested one
    with torch.inference_mode(False), torch.enable_grad():
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(dtype)
