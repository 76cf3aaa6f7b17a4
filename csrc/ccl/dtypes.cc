// Reduction kernels: one template per (storage type, accumulator type), instantiated per
// operator. Plain loops that the compiler vectorises; integer sum and product wrap
// around like numpy's (computed in the unsigned type, so there is no signed overflow).
#include "ccl/dtypes.h"

#include <algorithm>
#include <type_traits>

namespace disco {
namespace ccl {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI8: return 1;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  static const char* names[] = {"float32", "float64", "float16", "bfloat16", "int8", "int32", "int64"};
  int i = static_cast<int>(t);
  return i >= 0 && i < kNumDTypes ? names[i] : "unknown";
}

const char* op_name(Op op) {
  static const char* names[] = {"sum", "prod", "min", "max"};
  int i = static_cast<int>(op);
  return i >= 0 && i < kNumOps ? names[i] : "unknown";
}

namespace {

template <typename T, bool = std::is_integral_v<T>>
struct Wrap {  // arithmetic type for sum/prod: unsigned for integers so overflow wraps
  using type = T;
};
template <typename T>
struct Wrap<T, true> {
  using type = std::make_unsigned_t<T>;
};

// min and max propagate NaN like numpy's np.minimum / np.maximum: a NaN in either
// operand is the result. `b < a ? b : a` already keeps a NaN `a` (every comparison with
// NaN is false); a NaN `b` is selected here. Selects (compare, blend) vectorise.
template <typename A>
inline A or_nan(A b, A r) {
  if constexpr (std::is_floating_point_v<A>) {
    return b != b ? b : r;
  } else {
    return r;
  }
}

template <Op kOp, typename A>
inline A apply(A a, A b) {
  using W = typename Wrap<A>::type;
  if constexpr (kOp == Op::kSum) return static_cast<A>(static_cast<W>(a) + static_cast<W>(b));
  if constexpr (kOp == Op::kProd) return static_cast<A>(static_cast<W>(a) * static_cast<W>(b));
  if constexpr (kOp == Op::kMin) return or_nan(b, b < a ? b : a);
  if constexpr (kOp == Op::kMax) return or_nan(b, a < b ? b : a);
}

// Native types: the accumulator is the element type; fold source by source.
template <Op kOp, typename T>
void reduce_native(void* dst_v, const void* const* srcs, int nsrc, size_t n) {
  T* dst = static_cast<T*>(dst_v);
  const T* s0 = static_cast<const T*>(srcs[0]);
  if (nsrc == 1) {
    if (dst != s0) std::memcpy(dst, s0, n * sizeof(T));
    return;
  }
  const T* s1 = static_cast<const T*>(srcs[1]);
  for (size_t i = 0; i < n; ++i) dst[i] = apply<kOp, T>(s0[i], s1[i]);
  for (int p = 2; p < nsrc; ++p) {
    const T* sp = static_cast<const T*>(srcs[p]);
    for (size_t i = 0; i < n; ++i) dst[i] = apply<kOp, T>(dst[i], sp[i]);
  }
}

// 16-bit floats: widen to float32 in blocks, fold every source there, round once.
template <Op kOp, float (*kLoad)(uint16_t), uint16_t (*kStore)(float)>
void reduce_half(void* dst_v, const void* const* srcs, int nsrc, size_t n) {
  constexpr size_t kBlock = 512;
  float acc[kBlock];
  uint16_t* dst = static_cast<uint16_t*>(dst_v);
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t m = std::min(kBlock, n - b);
    const uint16_t* s0 = static_cast<const uint16_t*>(srcs[0]) + b;
    for (size_t i = 0; i < m; ++i) acc[i] = kLoad(s0[i]);
    for (int p = 1; p < nsrc; ++p) {
      const uint16_t* sp = static_cast<const uint16_t*>(srcs[p]) + b;
      for (size_t i = 0; i < m; ++i) acc[i] = apply<kOp, float>(acc[i], kLoad(sp[i]));
    }
    for (size_t i = 0; i < m; ++i) dst[b + i] = kStore(acc[i]);
  }
}

template <Op kOp>
void reduce_op(DType t, void* dst, const void* const* srcs, int nsrc, size_t n) {
  switch (t) {
    case DType::kF32: return reduce_native<kOp, float>(dst, srcs, nsrc, n);
    case DType::kF64: return reduce_native<kOp, double>(dst, srcs, nsrc, n);
    case DType::kF16: return reduce_half<kOp, f16_to_f32, f32_to_f16>(dst, srcs, nsrc, n);
    case DType::kBF16: return reduce_half<kOp, bf16_to_f32, f32_to_bf16>(dst, srcs, nsrc, n);
    case DType::kI8: return reduce_native<kOp, int8_t>(dst, srcs, nsrc, n);
    case DType::kI32: return reduce_native<kOp, int32_t>(dst, srcs, nsrc, n);
    case DType::kI64: return reduce_native<kOp, int64_t>(dst, srcs, nsrc, n);
  }
}

}  // namespace

void reduce(DType t, Op op, void* dst, const void* const* srcs, int nsrc, size_t count) {
  switch (op) {
    case Op::kSum: return reduce_op<Op::kSum>(t, dst, srcs, nsrc, count);
    case Op::kProd: return reduce_op<Op::kProd>(t, dst, srcs, nsrc, count);
    case Op::kMin: return reduce_op<Op::kMin>(t, dst, srcs, nsrc, count);
    case Op::kMax: return reduce_op<Op::kMax>(t, dst, srcs, nsrc, count);
  }
}

}  // namespace ccl
}  // namespace disco
