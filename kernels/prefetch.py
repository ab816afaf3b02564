"""Software prefetch for the random-row kernels (gathers, message passing).

A kernel that reads rows in an order only it knows (``h[indices[e]]``) leaves the
hardware prefetcher nothing to detect, so every row is a cache miss on DRAM's
latency. Asking for the row a few edges ahead overlaps those misses: measured
on the aggregation of an 81k x 128 float32 matrix over 93k edges, 3.1 ms -> 2.1 ms
with the data out of cache. A prefetch is only a hint: it never faults and
changes no result.
"""
import numba
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

LOOKAHEAD = 8
"""How many rows ahead of the current one the kernels prefetch (measured best of 2, 4, 8, 16)."""
LINE_BYTES = 64


def _emit_prefetch(context, builder, arrty, array_value, index_values, index_types):
    ary = context.make_array(arrty)(context, builder, array_value)
    inds = [context.cast(builder, v, t, types.intp) for v, t in zip(index_values, index_types)]
    ptr = cgutils.get_item_pointer2(context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
                                    strides=cgutils.unpack_tuple(builder, ary.strides), layout=arrty.layout,
                                    inds=inds, wraparound=False)
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
    # rw = 0 (read), locality = 3 (keep in every cache level), cache type = 1 (data)
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
    return context.get_dummy_value()


@intrinsic
def _prefetch_item(typingctx, arr, i, j):
    """Prefetch the cache line holding ``arr[i, j]`` of a 2-D array."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2):
        return None

    def codegen(context, builder, signature, args):
        return _emit_prefetch(context, builder, signature.args[0], args[0], args[1:], signature.args[1:])

    return types.void(arr, i, j), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def prefetch_row(arr, i):
    """Prefetch every cache line of row ``i`` of a C-contiguous 2-D array."""
    step = max(1, LINE_BYTES // arr.itemsize)
    for j in range(0, arr.shape[1], step):
        _prefetch_item(arr, i, j)



@intrinsic
def _prefetch_flat_item(typingctx, arr, i):
    """Prefetch the cache line holding ``arr[i]`` of a 1-D array."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        return _emit_prefetch(context, builder, signature.args[0], args[0], args[1:], signature.args[1:])

    return types.void(arr, i), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def prefetch_span(arr, start, n):
    """Prefetch every cache line of ``arr[start : start + n]`` of a 1-D array."""
    step = max(1, LINE_BYTES // arr.itemsize)
    for j in range(start, start + n, step):
        _prefetch_flat_item(arr, j)
