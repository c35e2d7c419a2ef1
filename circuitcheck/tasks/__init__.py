"""Tasks: the prompts and answers a claim is measured on, and builders for common ones."""
from ._task import BUILTIN_POSITIONS, EncodedTask, Task

__all__ = ["Task", "EncodedTask", "BUILTIN_POSITIONS"]
