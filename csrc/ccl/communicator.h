// The shared-memory communicator: one POSIX shm segment per group, a barrier on atomics
// in it, and per-rank staging slots that peers read in place.
//
// Segment layout (all offsets fixed at creation by rank 0):
//   Header                                   magic, world size, chunk size, ready flag
//   RankCtl[world]                           per rank: arrival word, futex waiter count,
//                                            and two Meta records (one per half)
//   slots[world] x 2 halves x 2 areas        each area `chunk_bytes` bytes
//   mailboxes[world][world]                  point-to-point, per (sender, receiver); p2p.h
//   arenas[world]                            each `arena_bytes`, see "The arena" below
//
// Every collective is a sequence of intervals separated by barriers. In the interval
// after barrier e, a rank writes only half (e & 1) of its own slot and Meta, and reads
// only half ((e + 1) & 1) of its peers' -- what they wrote before barrier e. Half h is
// written again two intervals later, after a barrier every rank passed once done
// reading it; so one barrier per pipeline step is enough and collectives follow each
// other without extra synchronisation. The first interval of every collective posts a
// Meta (which collective, dtype, op, axis, shape) next to the first chunk of data, and
// every rank checks all Metas after the first barrier, so an argument mismatch raises
// the same CollectiveError on every rank instead of hanging one of them. A rank whose
// own arguments are unusable (an axis out of range, a bad `out=`) still takes part in
// that first interval, posting an "invalid" Meta and the problem text (fail_arguments),
// so that every rank raises it after the same barrier and the group stays in step.
//
// The arena. Each rank owns a region of the segment from which it allocates arrays
// (`arena_alloc`, disco.ccl.empty in Python); every rank maps every region, so a
// collective whose arrays all lie in the arenas reads its peers' data in place instead
// of staging it through the slots (a 2-rank all-reduce then moves about 2.5x its size
// per rank instead of 4.5x). Metas carry each array's arena offset (-1: elsewhere),
// and the path is decided after the first barrier from every rank's Meta, so every
// rank decides the same: all inputs and outputs in arenas, read in place; all outputs
// there, inputs staged and the all-gather read in place; else staged. Ranks that
// skipped staging the first chunk because their own arrays were in the arena stage it
// when the group turns out to need it, and every rank passes one more barrier.
// The regions are sparse: a page costs memory once an allocation first reaches it,
// reserved then with fallocate so that a full /dev/shm fails the allocation (the
// array is then an ordinary one) instead of faulting later; an arena does not grow
// into the last max(64 MiB, 1/8) of /dev/shm, left for the segments that cannot fall
// back. Reserved pages stay reserved (up to the arena's high-water mark) until the
// communicator and its last arena array are gone. The rest of the segment is reserved
// when it is created.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ccl/dtypes.h"

namespace disco {
namespace ccl {

// Raised for every collective failure; the bindings turn it into disco.errors.CollectiveError.
struct CclError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  // Bytes each rank stages per pipeline step. A rank's slot is 4 x chunk_bytes (two
  // halves of two areas); keep the world's slots within L2/L3 so peers read from cache.
  size_t chunk_bytes = 256 << 10;
  // All-reduces up to this many bytes take the one-barrier path: every rank reduces the
  // whole message from all slots (reads world x size) instead of reduce-scatter +
  // all-gather (two barriers). Capped at chunk_bytes.
  size_t small_bytes = 16 << 10;
  // Longest wait at a barrier, or for the segment to appear, before CollectiveError.
  double timeout_s = 30.0;
  // Spin this long (checking the peers' arrival words) before sleeping on a futex.
  double spin_us = 50.0;
  // All-reduce outputs of at least this many bytes are written with non-temporal
  // (streaming) stores, saving the read-for-ownership of every output line; 0: never.
  // Off by default: on the 2-core reference VM it measured no faster at 16-64 MiB.
  size_t stream_bytes = 0;
  // Each rank's arena (see above); 0: none. Address space only until used.
  size_t arena_bytes = 256 << 20;
  // The group's secret (at most kSecretBytes, from the session): rank 0 writes it in the
  // header and a rank joins only a segment holding the same one.
  std::string secret;
  // The byte ring of each (sender, receiver) mailbox of point-to-point transfers (p2p.h):
  // payloads up to a quarter of it go through it, larger ones through the sender's arena
  // (or through the ring in pieces when the arena has no room).
  size_t p2p_bytes = 64 << 10;
};

constexpr size_t kSecretBytes = 64;

enum class Coll : int32_t {
  kInit = 0, kBarrier, kAllreduce, kAllgather, kReduceScatter, kBroadcast, kScatter, kGather,
};
const char* coll_name(Coll c);
// The Coll whose coll_name is "ccl." + `name` ("allreduce" -> kAllreduce); CclError if none.
Coll coll_from_name(const std::string& name);

// Longest problem text a rank can post with fail_arguments (longer ones are cut).
constexpr size_t kProblemBytes = 448;

constexpr int kMaxDims = 12;

// What a rank passed to a collective, posted in shm for its peers to check.
struct alignas(64) Meta {
  int32_t coll;      // Coll
  int32_t dtype;     // DType, or -1 for an unsupported one (name in dtype_name)
  int32_t op;        // Op, for reductions
  int32_t axis;      // as given (may be negative)
  int32_t ndim;      // -1: this rank passed no array (non-root of broadcast / scatter)
  int32_t invalid;   // 1: this rank's arguments were unusable; the problem text is posted too
  int64_t shape[kMaxDims];
  char dtype_name[24];
  int64_t in_off = -1;   // offset of the input in this rank's arena, -1 if not there
  int64_t out_off = -1;  // offset of the output in this rank's arena, -1 if not there
};

// Which Meta fields must agree across ranks (see Communicator::check).
enum CheckFlags : unsigned { kCheckDType = 1, kCheckOp = 2, kCheckAxis = 4, kCheckShape = 8 };

struct Mailbox;  // p2p.h

class Communicator {
 public:
  // Rank 0 creates the segment named after `group` (shm_open O_CREAT|O_EXCL, mode 0600);
  // a name that exists already is an error (never unlinked: it may be another group's).
  // The others attach, retrying while the name does not exist, and join only a segment
  // that is a regular file owned by this user, not readable or writable by others,
  // whose header holds the group's secret and world size, and whose slot for their rank
  // nobody has claimed (each rank claims its slot with its pid); anything else, and any
  // error other than ENOENT (ELOOP: a symbolic link at the name), is a CclError at
  // once, naming the cause. After all have attached rank 0 unlinks the name, so nothing
  // is left behind if the processes die; if the group never forms, rank 0 unlinks it.
  // What remains: a rank 0 killed (SIGKILL) between creation and the last attach leaves
  // the name behind; disco/ccl/segments.py sweeps such names (their creator is dead)
  // before a session makes a new group.
  Communicator(const std::string& group, int rank, int world, const Options& opts);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  const Options& options() const { return opts_; }
  size_t chunk_bytes() const { return opts_.chunk_bytes; }

  // This rank's writable staging area (0 or 1) in the current interval, and a peer's
  // readable one (what it wrote before the last barrier). Each is chunk_bytes long.
  uint8_t* wbuf(int area) { return slot(rank_, epoch_ & 1, area); }
  const uint8_t* rbuf(int peer, int area) const { return slot(peer, (epoch_ + 1) & 1, area); }

  // Post this rank's Meta for the current interval (the first of a collective).
  void post(const Meta& m);
  // This rank cannot run `coll` with the arguments it was given (`problem` says why):
  // take part in the collective's first interval with an invalid Meta, so that every
  // rank's check() throws the same CclError naming this rank and its problem. Always
  // throws; the group stays usable (every rank passed exactly one barrier).
  [[noreturn]] void fail_arguments(Coll coll, const std::string& problem);
  // After the first barrier: check every rank's Meta against rank 0's for the fields in
  // `flags`, that no rank posted invalid arguments, and that every rank called the same
  // collective with a supported dtype and op; throws the same CclError on every rank.
  // Returns rank 0's Meta.
  const Meta& check(const Meta& mine, unsigned flags) const;
  const Meta& peer_meta(int peer) const;

  // The arena (see the file comment). alloc: offset in this rank's region of a block of
  // at least `nbytes`, 256-byte aligned, or -1 (no arena, full, or /dev/shm full).
  int64_t arena_alloc(size_t nbytes);
  void arena_free(int64_t off);
  uint8_t* arena(int r) const { return base_ + arena_off_ + opts_.arena_bytes * static_cast<size_t>(r); }
  // Offset of [p, p + nbytes) in this rank's region, or -1 if it does not lie inside.
  int64_t arena_offset(const void* p, size_t nbytes) const;

  // How this rank's all-reduces ran (for diagnostics and tests): one barrier (small),
  // staged through the slots, staged with the all-gather read from the peers' outputs
  // in their arenas, or in place over the arenas altogether.
  struct AllreducePaths {
    uint64_t one_barrier = 0, staged = 0, outputs_in_arenas = 0, in_arenas = 0;
  } allreduce_paths;

  // Wait until every rank has reached the same barrier; ends the current interval.
  // Throws CclError naming `coll` and the missing ranks after options().timeout_s.
  void barrier(Coll coll);
  // Throws if an earlier timeout left the group out of step.
  void ensure_usable(Coll coll) const;

  // Point-to-point (p2p.h): the mailbox of messages from `src` to `dst`, its byte ring,
  // and whether rank `p`'s process is still alive (its pid, recorded at init, exists and
  // is no zombie; always true for ranks that are threads of this process).
  Mailbox* mailbox(int src, int dst) const;
  uint8_t* mailbox_ring(int src, int dst) const;
  bool peer_alive(int p) const;
  // This rank's p2p bookkeeping: the arena blocks of messages sent to each rank, freed
  // once received ((sequence number, arena offset), oldest first); pairs a timeout in
  // the middle of a payload left out of step.
  std::vector<std::deque<std::pair<uint32_t, int64_t>>> p2p_blocks;
  std::vector<char> p2p_send_broken, p2p_recv_broken;

 private:
  uint8_t* slot(int r, int half, int area) const;
  void check_arguments_valid() const;
  void wait_for(int peer, uint32_t epoch, Coll coll, double deadline);

  std::string name_;
  int rank_, world_;
  Options opts_;
  int fd_ = -1;  // kept for fallocate of arena pages
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  size_t ctl_off_ = 0, data_off_ = 0, p2p_off_ = 0, mailbox_stride_ = 0, arena_off_ = 0;
  std::mutex arena_mu_;
  std::map<size_t, size_t> arena_free_;  // offset -> bytes of free blocks, coalesced
  std::map<size_t, size_t> arena_used_;  // offset -> bytes of allocated blocks
  size_t arena_reserved_ = 0;           // bytes of this rank's region fallocate'd so far
  uint32_t epoch_ = 0;  // barriers passed
  bool broken_ = false;
};

// Waiting on a 32-bit word shared between processes (futex) and the clock of deadlines.
double now_seconds();
void bell_wait(std::atomic<uint32_t>* bell, uint32_t expected, long timeout_ns);
void bell_wake(std::atomic<uint32_t>* bell);

// memcpy, or with streaming stores when `stream` (x86; plain memcpy elsewhere). Call
// stream_fence() after the last streaming copy of a collective.
void copy_out(void* dst, const void* src, size_t n, bool stream);
void stream_fence();

// Elements in the array a Meta describes (0 for "no array").
inline size_t numel(const Meta& m) {
  size_t n = 1;
  for (int i = 0; i < m.ndim; ++i) n *= static_cast<size_t>(m.shape[i]);
  return m.ndim < 0 ? 0 : n;
}
inline size_t elem_size(const Meta& m) { return m.dtype >= 0 ? dtype_size(static_cast<DType>(m.dtype)) : 1; }
inline int norm_axis(const Meta& m) { return m.axis < 0 ? m.axis + m.ndim : m.axis; }
// Elements before `axis` (rows) and from `axis` on (row length) of a C-contiguous array.
inline void split_at_axis(const Meta& m, int axis, size_t* outer, size_t* rest) {
  *outer = 1;
  *rest = 1;
  for (int i = 0; i < m.ndim; ++i) (i < axis ? *outer : *rest) *= static_cast<size_t>(m.shape[i]);
}

// A rank's flat bytes [b, b + len), seen as rows of `row` bytes, land in a wider array
// whose rows are `stride` bytes, at column `col`: dst[o*stride + col + i] = src[o*row + i].
// (Concatenation along an axis; get_rows is the inverse, splitting along an axis.)
inline void put_rows(uint8_t* dst, size_t stride, size_t col, size_t row, const uint8_t* src, size_t b, size_t len) {
  while (len > 0) {
    const size_t o = b / row, i = b % row, n = std::min(len, row - i);
    std::memcpy(dst + o * stride + col + i, src, n);
    src += n, b += n, len -= n;
  }
}
inline void get_rows(uint8_t* dst, const uint8_t* src, size_t stride, size_t col, size_t row, size_t b, size_t len) {
  while (len > 0) {
    const size_t o = b / row, i = b % row, n = std::min(len, row - i);
    std::memcpy(dst, src + o * stride + col + i, n);
    dst += n, b += n, len -= n;
  }
}

}  // namespace ccl
}  // namespace disco
