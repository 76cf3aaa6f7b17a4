#include "ccl/broadcast.h"

namespace disco {
namespace ccl {

namespace {
size_t nbytes_of(const Meta& m) { return m.dtype >= 0 ? numel(m) * elem_size(m) : 0; }
}  // namespace

Meta broadcast_begin(Communicator& c, Meta m, const void* in) {
  m.coll = static_cast<int32_t>(Coll::kBroadcast);
  c.ensure_usable(Coll::kBroadcast);
  c.post(m);
  if (c.rank() == 0) std::memcpy(c.wbuf(0), in, std::min(nbytes_of(m), 2 * c.chunk_bytes()));
  c.barrier(Coll::kBroadcast);
  const Meta root = c.check(m, 0);
  if (root.ndim < 0) throw CclError("ccl.broadcast_from_worker0: worker 0 must pass an array, given None");
  return root;
}

void broadcast_finish(Communicator& c, const Meta& root, const void* in_v, void* out_v) {
  const auto* in = static_cast<const uint8_t*>(in_v);
  auto* out = static_cast<uint8_t*>(out_v);
  const size_t nbytes = nbytes_of(root), cb = 2 * c.chunk_bytes();
  const size_t K = (nbytes + cb - 1) / cb;
  const bool root_rank = c.rank() == 0;
  if (root_rank && nbytes > 0) std::memcpy(out, in, nbytes);
  for (size_t i = 1; i <= K; ++i) {
    if (root_rank && i < K) std::memcpy(c.wbuf(0), in + i * cb, std::min(cb, nbytes - i * cb));
    if (!root_rank) std::memcpy(out + (i - 1) * cb, c.rbuf(0, 0), std::min(cb, nbytes - (i - 1) * cb));
    if (i < K) c.barrier(Coll::kBroadcast);
  }
}

}  // namespace ccl
}  // namespace disco
