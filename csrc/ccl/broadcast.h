// Broadcast from worker 0: every rank ends with a copy of worker 0's x.
#pragma once

#include "ccl/communicator.h"

namespace disco {
namespace ccl {

// Two calls, so that the other ranks can allocate their output once they know its
// shape: begin posts `m` (ndim -1 on ranks that pass no array) and worker 0's first
// chunk, passes the first barrier and returns worker 0's Meta; finish streams the
// rest, one barrier per chunk. `in` is read on worker 0 only.
Meta broadcast_begin(Communicator& c, Meta m, const void* in);
void broadcast_finish(Communicator& c, const Meta& root, const void* in, void* out);

}  // namespace ccl
}  // namespace disco
