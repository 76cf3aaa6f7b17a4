#include "ccl/allgather.h"

namespace disco {
namespace ccl {

void allgather(Communicator& c, Meta m, const void* in_v, void* out_v) {
  m.coll = static_cast<int32_t>(Coll::kAllgather);
  c.ensure_usable(Coll::kAllgather);
  const auto* in = static_cast<const uint8_t*>(in_v);
  auto* out = static_cast<uint8_t*>(out_v);
  const int W = c.world(), r = c.rank();
  const size_t nbytes = m.dtype >= 0 ? numel(m) * elem_size(m) : 0;
  const size_t cb = 2 * c.chunk_bytes();  // both areas of a half are contiguous
  const size_t K = (nbytes + cb - 1) / cb;
  auto len_of = [&](size_t k) { return std::min(cb, nbytes - k * cb); };

  c.post(m);
  if (K > 0) std::memcpy(c.wbuf(0), in, len_of(0));
  c.barrier(Coll::kAllgather);
  c.check(m, kCheckDType | kCheckAxis | kCheckShape);
  size_t outer, rest;
  split_at_axis(m, norm_axis(m), &outer, &rest);
  const size_t row = rest * elem_size(m), stride = W * row;
  if (nbytes > 0) put_rows(out, stride, r * row, row, in, 0, nbytes);  // my own part
  for (size_t i = 1; i <= K; ++i) {
    if (i < K) std::memcpy(c.wbuf(0), in + i * cb, len_of(i));
    for (int q = 0; q < W; ++q) {
      if (q != r) put_rows(out, stride, q * row, row, c.rbuf(q, 0), (i - 1) * cb, len_of(i - 1));
    }
    if (i < K) c.barrier(Coll::kAllgather);
  }
}

}  // namespace ccl
}  // namespace disco
