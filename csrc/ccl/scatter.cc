#include "ccl/scatter.h"

namespace disco {
namespace ccl {

namespace {

// The (outer, world, row) view of worker 0's array, in bytes.
struct Layout {
  size_t row = 0, part_bytes = 0, piece = 0, K = 0;
  Layout(const Communicator& c, const Meta& m) {
    const int axis = norm_axis(m), W = c.world();
    if (m.dtype < 0 || axis < 0 || axis >= m.ndim || m.shape[axis] % W != 0) return;
    size_t outer, rest;
    split_at_axis(m, axis, &outer, &rest);
    row = rest / W * elem_size(m);
    part_bytes = outer * row;
    piece = c.chunk_bytes() * 2 / W / 64 * 64;
    K = (part_bytes + piece - 1) / piece;
  }
  size_t len(size_t k) const { return std::min(piece, part_bytes - k * piece); }
};

void stage(Communicator& c, const Layout& l, const uint8_t* in, size_t k) {
  for (int q = 1; q < c.world(); ++q) get_rows(c.wbuf(0) + q * l.piece, in, c.world() * l.row, q * l.row, l.row, k * l.piece, l.len(k));
}

}  // namespace

Meta scatter_begin(Communicator& c, Meta m, const void* in) {
  m.coll = static_cast<int32_t>(Coll::kScatter);
  c.ensure_usable(Coll::kScatter);
  c.post(m);
  if (c.rank() == 0) {
    const Layout l(c, m);
    if (l.K > 0) stage(c, l, static_cast<const uint8_t*>(in), 0);
  }
  c.barrier(Coll::kScatter);
  const Meta root = c.check(m, 0);
  if (root.ndim < 0) throw CclError("ccl.scatter_from_worker0: worker 0 must pass an array, given None");
  const int axis = norm_axis(root);
  if (axis < 0 || axis >= root.ndim || root.shape[axis] % c.world() != 0) {
    throw CclError("ccl.scatter_from_worker0: worker 0's array must have an axis " + std::to_string(root.axis) +
                   " whose length is divisible by " + std::to_string(c.world()) + " workers; given length " +
                   (axis >= 0 && axis < root.ndim ? std::to_string(root.shape[axis]) : std::string("-")) +
                   " in " + std::to_string(root.ndim) + " dims");
  }
  return root;
}

void scatter_finish(Communicator& c, const Meta& root, const void* in_v, void* out_v) {
  const auto* in = static_cast<const uint8_t*>(in_v);
  auto* out = static_cast<uint8_t*>(out_v);
  const Layout l(c, root);
  const int r = c.rank();
  if (r == 0 && l.part_bytes > 0) get_rows(out, in, c.world() * l.row, 0, l.row, 0, l.part_bytes);
  for (size_t i = 1; i <= l.K; ++i) {
    if (r == 0 && i < l.K) stage(c, l, in, i);
    if (r != 0) std::memcpy(out + (i - 1) * l.piece, c.rbuf(0, 0) + r * l.piece, l.len(i - 1));
    if (i < l.K) c.barrier(Coll::kScatter);
  }
}

}  // namespace ccl
}  // namespace disco
