// The command channel of a Disco session: one shared-memory segment holding a broadcast
// ring of commands (written by the controller, read by every worker) and one reply slot
// per worker. Bytes only; what the bytes mean is the codec's business
// (channel_bindings.cc) and the protocol's (disco/session/protocol.py).
//
// Segment layout:
//   Header                     magic, sizes, write position, command futex, closed flag
//   WorkerBlock[num_workers]   per worker: read position, consumed seq, reply seq/futex/len
//   reply areas                num_workers x reply_bytes
//   ring                       ring_bytes; messages are 8-byte aligned, never split: a
//                              message that does not fit before the end is preceded by a
//                              wrap marker and starts again at offset 0
//
// Positions and sequence numbers only grow (u64), so "is there something new" is one
// comparison. Waiting spins briefly (a pause-then-yield loop, since controller and
// workers may share fewer cores than there are of them) and then sleeps on a futex with
// a timeout; the sleeper count tells the waker whether the wake syscall is needed.
//
// The segment is created with shm_open(O_CREAT|O_EXCL, 0600) and unlinked at once: it
// lives only as long as some process keeps its fd or a mapping, so nothing can be left in
// /dev/shm whichever process dies. Workers get the fd by inheritance (or read it through
// /proc/<pid>/fd/<fd>).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace disco {
namespace channel {

struct ChannelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  int num_workers = 1;
  uint64_t ring_bytes = 16ull << 20;  // command ring capacity; the largest message is 1/4
  uint32_t reply_bytes = 256u << 10;  // each worker's reply area
  double spin_us = 20.0;              // busy-wait this long before sleeping on a futex
};

struct alignas(64) Header {
  uint64_t magic;
  int32_t num_workers;
  uint32_t reply_bytes;
  uint64_t ring_bytes;
  double spin_us;
  alignas(64) std::atomic<uint64_t> write_pos;  // end of the last published message
  std::atomic<uint64_t> seq;                    // seq of the last published message
  std::atomic<uint32_t> cmd_futex;              // bumped on every publish
  std::atomic<uint32_t> cmd_sleepers;           // workers asleep on cmd_futex
  std::atomic<uint32_t> closed;                 // controller closed the channel
};

struct alignas(64) WorkerBlock {
  std::atomic<uint64_t> read_pos;      // ring position of the next message to read
  std::atomic<uint64_t> consumed_seq;  // seq of the last message fully decoded
  std::atomic<uint64_t> reply_seq;     // seq the current reply answers
  std::atomic<uint32_t> reply_futex;   // bumped on every reply
  std::atomic<uint32_t> ctrl_sleeping; // controller asleep on reply_futex
  std::atomic<uint32_t> attached;      // worker has mapped the segment
  uint32_t reply_status;
  uint32_t reply_len;
};

// A message in the ring: this header, then `len - sizeof(MsgHeader)` payload bytes.
struct MsgHeader {
  uint32_t len;   // whole message incl. header, multiple of 8; 0 marks a wrap
  uint32_t pad;
  uint64_t seq;
};

class Channel {
 public:
  // Controller side: create the segment (unlinked at once; see the file comment).
  explicit Channel(const Options& opts);
  // Worker side: map the segment behind `fd` (the fd is dup'ed, the caller keeps its own).
  Channel(int fd, int worker_id);
  ~Channel();
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  int fd() const { return fd_; }
  int num_workers() const { return hdr_->num_workers; }
  int worker_id() const { return worker_id_; }
  uint32_t reply_capacity() const { return hdr_->reply_bytes; }
  uint64_t max_message() const { return hdr_->ring_bytes / 4; }

  // -- controller --
  // Reserve room for a payload of `len` bytes; nullptr if none freed up within
  // timeout_s (workers behind). Then Publish() makes it visible and returns its seq.
  uint8_t* Reserve(uint64_t len, double timeout_s);
  uint64_t Publish();
  uint64_t last_seq() const { return hdr_->seq.load(std::memory_order_relaxed); }
  bool WaitReply(int w, uint64_t seq, double timeout_s);  // false on timeout
  const uint8_t* Reply(int w, uint32_t* status, uint32_t* len) const;
  bool attached(int w) const { return blk(w)->attached.load(std::memory_order_acquire) != 0; }
  uint64_t consumed(int w) const { return blk(w)->consumed_seq.load(std::memory_order_acquire); }
  void Close();  // tells sleeping workers to wake up and look

  // -- worker --
  bool WaitCommand(double timeout_s);  // true once a message (or close) is there
  // The next message: payload pointer and length, its seq; nullptr if none.
  const uint8_t* Peek(uint32_t* len, uint64_t* seq);
  void Pop();  // done with the message Peek returned
  bool closed() const { return hdr_->closed.load(std::memory_order_acquire) != 0; }
  uint8_t* ReplyArea() { return replies_ + uint64_t(worker_id_) * hdr_->reply_bytes; }
  void PostReply(uint64_t seq, uint32_t status, uint32_t len);

 private:
  WorkerBlock* blk(int w) const { return blocks_ + w; }
  void Map(size_t total);

  int fd_ = -1;
  int worker_id_ = -1;  // -1: the controller
  size_t total_ = 0;
  uint8_t* base_ = nullptr;
  Header* hdr_ = nullptr;
  WorkerBlock* blocks_ = nullptr;
  uint8_t* replies_ = nullptr;
  uint8_t* ring_ = nullptr;
  uint64_t pending_pos_ = 0;  // controller: end of the reserved, unpublished message
  uint64_t pending_start_ = 0;
  uint64_t peek_end_ = 0;     // worker: end of the message Peek returned
  uint64_t peek_seq_ = 0;     // worker: its seq
};

// Create an unlinked shared-memory file of `nbytes` (shm_open O_EXCL, 0600, then
// shm_unlink); returns its fd. Used for large arrays that bypass the ring.
int CreateAnonymousSegment(uint64_t nbytes);

}  // namespace channel
}  // namespace disco
