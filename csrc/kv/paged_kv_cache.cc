#include "kv/paged_kv_cache.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include "ccl/dtypes.h"
#include "kv/attention.h"

namespace disco {
namespace kv {

size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

void PagedKVCache::FreeDeleter::operator()(void* p) const { std::free(p); }

namespace {

const char* const kNoStepYet = "no step has begun; call begin_forward(seq_ids, append_lengths) first";

// n elements of type `from` at src as type `to` at dst (to 16 bits: rounded to nearest even).
void convert(DType from, const void* src, DType to, void* dst, size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * dtype_size(to));
    return;
  }
  const uint16_t* s16 = static_cast<const uint16_t*>(src);
  uint16_t* d16 = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < n; ++i) {
    const float x = from == DType::kF32    ? static_cast<const float*>(src)[i]
                    : from == DType::kF16 ? ccl::f16_to_f32(s16[i])
                                          : ccl::bf16_to_f32(s16[i]);
    if (to == DType::kF32) static_cast<float*>(dst)[i] = x;
    else d16[i] = to == DType::kF16 ? ccl::f32_to_f16(x) : ccl::f32_to_bf16(x);
  }
}

int64_t pages_for(int64_t tokens, int64_t page_size) { return (tokens + page_size - 1) / page_size; }

// Zeroed memory from calloc: the pages of a large cache cost nothing until first written.
char* alloc_zeroed(size_t elems, size_t elem_size, const char* what) {
  size_t bytes;
  void* p = nullptr;
  if (!__builtin_mul_overflow(elems, elem_size, &bytes)) p = std::calloc(elems, elem_size);
  if (p == nullptr) {
    throw KVError(std::string("PagedKVCache: cannot allocate the ") + what + " (" + std::to_string(elems) +
                  " elements of " + std::to_string(elem_size) + " bytes); use fewer pages (num_pages)");
  }
  return static_cast<char*>(p);
}

}  // namespace

PagedKVCache::PagedKVCache(const Options& o) : o_(o), no_step_(kNoStepYet), pool_(std::max(1, o.num_threads)) {
  struct {
    const char* name;
    int64_t value;
  } dims[] = {{"num_layers", o.num_layers}, {"num_kv_heads", o.num_kv_heads}, {"head_dim", o.head_dim},
              {"num_pages", o.num_pages}, {"page_size", o.page_size}};
  for (const auto& d : dims) {
    if (d.value < 1) {
      throw KVError(std::string("PagedKVCache: ") + d.name + " must be at least 1, got " + std::to_string(d.value));
    }
  }
  if (o.num_pages > std::numeric_limits<int32_t>::max()) {
    throw KVError("PagedKVCache: num_pages is " + std::to_string(o.num_pages) + "; at most 2^31 - 1 are supported");
  }
  size_t elems;
  if (__builtin_mul_overflow(layer_elems(), size_t(o.num_layers), &elems)) elems = std::numeric_limits<size_t>::max();
  keys_.reset(alloc_zeroed(elems, dtype_size(o.dtype), "keys"));
  values_.reset(alloc_zeroed(elems, dtype_size(o.dtype), "values"));
  free_pages_.reserve(o.num_pages);
  for (int64_t p = o.num_pages - 1; p >= 0; --p) free_pages_.push_back(static_cast<int32_t>(p));
}

PagedKVCache::Sequence& PagedKVCache::find(int64_t seq_id, const char* where) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) {
    std::ostringstream s;
    s << "PagedKVCache." << where << ": unknown sequence " << seq_id << "; the cache holds ";
    if (seqs_.empty()) s << "no sequences";
    else {
      s << "sequences [";
      const char* sep = "";
      for (const auto& kv : seqs_) {
        s << sep << kv.first;
        sep = ", ";
      }
      s << "]";
    }
    s << " (add it with add_sequence first)";
    throw KVError(s.str());
  }
  return it->second;
}

void PagedKVCache::add_sequence(int64_t seq_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!seqs_.emplace(seq_id, Sequence{}).second) {
    throw KVError("PagedKVCache.add_sequence: sequence " + std::to_string(seq_id) + " already exists (length " +
                  std::to_string(seqs_[seq_id].length) + "); remove it first or use another id");
  }
}

void PagedKVCache::remove_sequence(int64_t seq_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Sequence& s = find(seq_id, "remove_sequence");
  for (auto it = s.pages.rbegin(); it != s.pages.rend(); ++it) free_pages_.push_back(*it);
  seqs_.erase(seq_id);
  for (const StepEntry& e : step_) {
    if (e.seq_id == seq_id) {  // the step's rows no longer have a history to attend to
      step_.clear();
      no_step_ = "sequence " + std::to_string(seq_id) +
                 " of the last step was removed; call begin_forward again for the sequences that remain";
      break;
    }
  }
}

void PagedKVCache::begin_forward(const std::vector<int64_t>& ids, const std::vector<int64_t>& lengths) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ids.size() != lengths.size()) {
    throw KVError("PagedKVCache.begin_forward: " + std::to_string(ids.size()) + " sequence ids but " +
                  std::to_string(lengths.size()) + " append lengths; give one length per sequence");
  }
  // Check everything before changing anything.
  std::set<int64_t> seen;
  int64_t needed = 0;
  std::ostringstream per_seq;  // "seq 3: 2, seq 5: 1" for the out-of-pages message
  for (size_t i = 0; i < ids.size(); ++i) {
    Sequence& s = find(ids[i], "begin_forward");
    if (!seen.insert(ids[i]).second) {
      throw KVError("PagedKVCache.begin_forward: sequence " + std::to_string(ids[i]) +
                    " appears twice in seq_ids; give each sequence once, with all its new tokens");
    }
    if (lengths[i] < 0) {
      throw KVError("PagedKVCache.begin_forward: append length " + std::to_string(lengths[i]) + " for sequence " +
                    std::to_string(ids[i]) + " is negative");
    }
    const int64_t more = pages_for(s.length + lengths[i], o_.page_size) - (int64_t)s.pages.size();
    if (more > 0) {
      per_seq << (needed ? ", " : "") << "sequence " << ids[i] << ": " << more;
      needed += more;
    }
  }
  if (needed > (int64_t)free_pages_.size()) {
    std::ostringstream s;
    s << "PagedKVCache.begin_forward: out of pages: the step needs " << needed << " more pages (" << per_seq.str()
      << ") but only " << free_pages_.size() << " of " << o_.num_pages << " are free (page_size " << o_.page_size
      << "); nothing was changed. Remove finished sequences, run fewer at once, or make the cache larger "
         "(num_pages)";
    throw OutOfPages(s.str(), needed, (int64_t)free_pages_.size());
  }
  std::vector<StepEntry> step;
  int64_t row = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    Sequence& s = seqs_[ids[i]];
    const int64_t want = pages_for(s.length + lengths[i], o_.page_size);
    while ((int64_t)s.pages.size() < want) {
      s.pages.push_back(free_pages_.back());
      free_pages_.pop_back();
    }
    step.push_back({ids[i], s.length, lengths[i], row});
    s.length += lengths[i];
    row += lengths[i];
  }
  step_ = std::move(step);
  no_step_.clear();
}

void PagedKVCache::check_step(const char* where) {
  if (!no_step_.empty()) throw KVError(std::string("PagedKVCache.") + where + ": " + no_step_);
}

std::vector<int64_t> PagedKVCache::positions() {
  std::lock_guard<std::mutex> lock(mu_);
  check_step("positions");
  std::vector<int64_t> pos;
  for (const StepEntry& e : step_) {
    for (int64_t t = 0; t < e.count; ++t) pos.push_back(e.start + t);
  }
  return pos;
}

int64_t PagedKVCache::step_rows() {
  std::lock_guard<std::mutex> lock(mu_);
  check_step("attention");
  return step_.empty() ? 0 : step_.back().row + step_.back().count;
}

void PagedKVCache::attention(int64_t layer, int64_t rows, int64_t num_heads, DType io_dtype, const void* q,
                             const void* k, const void* v, void* out, float scale) {
  std::lock_guard<std::mutex> lock(mu_);
  check_step("attention");
  const int64_t step_rows = step_.empty() ? 0 : step_.back().row + step_.back().count;
  if (rows != step_rows) {
    throw KVError("PagedKVCache.attention: q has " + std::to_string(rows) + " tokens but the step begun by "
                  "begin_forward has " + std::to_string(step_rows));
  }
  if (layer < 0 || layer >= o_.num_layers) {
    throw KVError("PagedKVCache.attention: layer " + std::to_string(layer) + " is out of range; the cache has " +
                  std::to_string(o_.num_layers) + " layers (0.." + std::to_string(o_.num_layers - 1) + ")");
  }
  if (num_heads < 1 || num_heads % o_.num_kv_heads) {
    throw KVError("PagedKVCache.attention: " + std::to_string(num_heads) + " q heads is not a multiple of the " +
                  std::to_string(o_.num_kv_heads) + " kv heads");
  }
  const size_t es = dtype_size(o_.dtype), ies = dtype_size(io_dtype), D = o_.head_dim, KV = o_.num_kv_heads,
               S = o_.page_size;
  const size_t layer_off = size_t(layer) * layer_elems() * es;
  char* keys = keys_.get() + layer_off;
  char* values = values_.get() + layer_off;

  // Append: the step's keys and values go to their committed positions.
  std::vector<const int32_t*> tables;
  for (const StepEntry& e : step_) {
    const Sequence& s = seqs_.at(e.seq_id);
    tables.push_back(s.pages.data());
    for (int64_t t = 0; t < e.count; ++t) {
      const int64_t pos = e.start + t;
      const size_t slot0 = (size_t(s.pages[pos / S]) * KV * S + pos % S) * D;  // kv head 0
      for (size_t h = 0; h < KV; ++h) {
        const size_t dst = (slot0 + h * S * D) * es, src = ((e.row + t) * KV + h) * D * ies;
        convert(io_dtype, static_cast<const char*>(k) + src, o_.dtype, keys + dst, D);
        convert(io_dtype, static_cast<const char*>(v) + src, o_.dtype, values + dst, D);
      }
    }
  }

  AttentionArgs a{o_.dtype, io_dtype, num_heads, o_.num_kv_heads, o_.head_dim, o_.page_size, keys, values,
                  &step_, &tables, q, out, scale};
  attend(a, pool_);
}

int64_t PagedKVCache::seq_length(int64_t seq_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return find(seq_id, "seq_length").length;
}

std::vector<int64_t> PagedKVCache::sequences() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t> ids;
  for (const auto& kv : seqs_) ids.push_back(kv.first);
  return ids;
}

int64_t PagedKVCache::num_free_pages() {
  std::lock_guard<std::mutex> lock(mu_);
  return (int64_t)free_pages_.size();
}

std::vector<int32_t> PagedKVCache::pages(int64_t seq_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return find(seq_id, "pages").pages;
}

}  // namespace kv
}  // namespace disco
