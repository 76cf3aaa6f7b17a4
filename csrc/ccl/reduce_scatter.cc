#include "ccl/reduce_scatter.h"

#include <vector>

namespace disco {
namespace ccl {

void reduce_scatter(Communicator& c, Meta m, const void* in_v, void* out_v) {
  m.coll = static_cast<int32_t>(Coll::kReduceScatter);
  c.ensure_usable(Coll::kReduceScatter);
  const auto* in = static_cast<const uint8_t*>(in_v);
  auto* out = static_cast<uint8_t*>(out_v);
  const int W = c.world(), r = c.rank();
  const size_t es = elem_size(m);
  const int axis = norm_axis(m);
  // Parts are rows of the (outer, W, part_row) view; a part flattens to outer x part_row.
  const bool valid = m.dtype >= 0 && axis >= 0 && axis < m.ndim && m.shape[axis] % W == 0;
  size_t outer = 0, rest = 0;
  if (valid) split_at_axis(m, axis, &outer, &rest);
  const size_t row = rest / W * es, part_bytes = outer * row;  // bytes
  const size_t piece = c.chunk_bytes() * 2 / W / 64 * 64;      // bytes of each part per step
  const size_t K = (part_bytes + piece - 1) / piece;
  auto len_of = [&](size_t k) { return std::min(piece, part_bytes - k * piece); };
  auto stage = [&](size_t k) {
    for (int q = 0; q < W; ++q) get_rows(c.wbuf(0) + q * piece, in, W * row, q * row, row, k * piece, len_of(k));
  };

  c.post(m);
  if (valid && K > 0) stage(0);
  c.barrier(Coll::kReduceScatter);
  const Meta& root = c.check(m, kCheckDType | kCheckOp | kCheckAxis | kCheckShape);
  if (axis < 0 || axis >= root.ndim || root.shape[axis] % W != 0) {
    throw CclError("ccl.reduce_scatter: axis " + std::to_string(m.axis) + " of shape with " +
                   std::to_string(root.ndim) + " dims must exist and have a length divisible by " +
                   std::to_string(W) + " workers; given length " +
                   (axis >= 0 && axis < root.ndim ? std::to_string(root.shape[axis]) : std::string("-")));
  }
  std::vector<const void*> srcs(W);
  for (size_t i = 1; i <= K; ++i) {
    if (i < K) stage(i);
    const size_t k = i - 1, len = len_of(k);
    for (int p = 0; p < W; ++p) srcs[p] = c.rbuf(p, 0) + r * piece;
    reduce(static_cast<DType>(m.dtype), static_cast<Op>(m.op), out + k * piece, srcs.data(), W, len / es);
    if (i < K) c.barrier(Coll::kReduceScatter);
  }
}

}  // namespace ccl
}  // namespace disco
