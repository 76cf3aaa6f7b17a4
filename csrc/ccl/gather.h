// Gather to worker 0: worker 0 ends with concatenate([x_0, ..., x_{world-1}], axis).
#pragma once

#include "ccl/communicator.h"

namespace disco {
namespace ccl {

// `m` describes `in` (same shape on every rank); `out` (worker 0 only, null elsewhere)
// holds world x in's bytes as the concatenation along m.axis. Pipelined like allgather,
// but only worker 0 reads.
void gather_to_worker0(Communicator& c, Meta m, const void* in, void* out);

}  // namespace ccl
}  // namespace disco
