"""The Triton kernels of rubikops and their launchers; rubikops.backends.triton
registers them as ops.

On CPU tensors the kernels run in the Triton interpreter, which must be enabled
with TRITON_INTERPRET=1 *before* this package is imported.
"""
