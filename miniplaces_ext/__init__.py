"""miniplaces_ext: convolutions on our own C++/CUDA kernels, and a Miniplaces workflow on them.

Swap ``torch.nn.functional.conv2d`` for ``miniplaces_ext.conv2d`` (same arguments,
plus ``padding_mode``), ``nn.Conv2d`` for ``miniplaces_ext.nn.Conv2d``, or call
``miniplaces_ext.swap_convs(model)`` to put our kernels into an existing model.

The CPU kernels pick an instruction-set level at run time (``cpu_capabilities()``;
``set_cpu_options(isa="portable"|"avx2"|"avx512")`` or ``MINIPLACES_CPU_ISA`` lowers it).
"""
from miniplaces_ext import _library

LIBRARY_PATH = _library.load()

from miniplaces_ext._library import (  # noqa: E402
    clear_weight_cache, cpu_capabilities, cpu_conv_algorithm, cpu_conv_plan, cpu_options, cuda_kernels_built,
    get_cpu_options, set_cpu_options, weight_cache_size)
from miniplaces_ext.nn import Conv1d, Conv2d, restore_convs, swap_convs  # noqa: E402
from miniplaces_ext.ops import Conv1dFunction, Conv2dFunction, conv1d, conv2d  # noqa: E402
from miniplaces_ext.inference import optimize_for_inference  # noqa: E402
from miniplaces_ext.allocator import reuse_freed_memory  # noqa: E402

__all__ = [
    "Conv1d",
    "Conv1dFunction",
    "Conv2d",
    "Conv2dFunction",
    "clear_weight_cache",
    "conv1d",
    "conv2d",
    "cpu_capabilities",
    "cpu_conv_algorithm",
    "cpu_conv_plan",
    "cpu_options",
    "cuda_kernels_built",
    "get_cpu_options",
    "optimize_for_inference",
    "restore_convs",
    "reuse_freed_memory",
    "set_cpu_options",
    "swap_convs",
    "weight_cache_size",
]

try:  # an invalid MINIPLACES_CPU_* switch is reported once, at import, in one line
    cpu_capabilities()
except RuntimeError as _exc:
    raise ImportError(f"miniplaces_ext: {str(_exc).splitlines()[0]}") from None
