// All-gather: every rank ends with concatenate([x_0, ..., x_{world-1}], axis).
#pragma once

#include "ccl/communicator.h"

namespace disco {
namespace ccl {

// `m` describes `in` (same shape on every rank); `out` holds world x in's bytes, laid
// out as the concatenation along m.axis. Pipelined: stage chunk k+1 of `in` while
// copying the peers' chunk k into place; one barrier per chunk of 2 x chunk_bytes.
void allgather(Communicator& c, Meta m, const void* in, void* out);

}  // namespace ccl
}  // namespace disco
