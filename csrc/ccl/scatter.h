// Scatter from worker 0: rank r ends with part r of worker 0's x, split along `axis`.
#pragma once

#include "ccl/communicator.h"

namespace disco {
namespace ccl {

// Two calls like broadcast: begin posts `m` (ndim -1 on ranks that pass no array) and
// worker 0's first piece of every part, and returns worker 0's Meta (its shape has
// shape[axis] divisible by world, checked on every rank); finish streams the rest.
Meta scatter_begin(Communicator& c, Meta m, const void* in);
void scatter_finish(Communicator& c, const Meta& root, const void* in, void* out);

}  // namespace ccl
}  // namespace disco
