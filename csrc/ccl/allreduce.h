// All-reduce: every rank ends with op(x_0, ..., x_{world-1}) elementwise.
#pragma once

#include "ccl/communicator.h"

namespace disco {
namespace ccl {

// `m` describes `in` (dtype, op, shape); `out` has the same size and may equal `in`.
// Small messages (<= options().small_bytes): one barrier, every rank reduces all slots.
// Large ones are pipelined in chunks, one barrier per chunk: stage chunk k+1, reduce
// this rank's region of chunk k from all slots (reduce-scatter step), copy the other
// ranks' reduced regions of chunk k-1 out (all-gather step). When every rank's `in` and
// `out` lie in the arenas, nothing is staged: each rank reduces its region from its
// peers' inputs in place, then copies the other regions from their outputs. When only
// every `out` does, inputs are staged and the all-gather reads the peers' outputs.
void allreduce(Communicator& c, Meta m, const void* in, void* out);

}  // namespace ccl
}  // namespace disco
