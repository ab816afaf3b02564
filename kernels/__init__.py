"""numba kernels: module-level functions over arrays. No I/O, no classes, no logging."""
