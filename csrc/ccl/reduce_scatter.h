// Reduce-scatter: rank r ends with part r (along `axis`) of op(x_0, ..., x_{world-1}).
#pragma once

#include "ccl/communicator.h"

namespace disco {
namespace ccl {

// `m` describes `in` (same shape on every rank, shape[axis] divisible by world); `out`
// holds in's bytes / world. Each step every rank stages a piece of every part (part q
// at region q of its slot); rank r then reduces region r of all slots into `out`.
void reduce_scatter(Communicator& c, Meta m, const void* in, void* out);

}  // namespace ccl
}  // namespace disco
