"""What the model loaders share: the dtype keyword of the installed transformers and the
first line of an error for messages."""

from __future__ import annotations

import torch


def dtype_kwargs(dtype: torch.dtype = torch.float32) -> dict:
    # transformers 4.56 renamed `torch_dtype` to `dtype` (the old name warns in 5.x).
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
