// Point-to-point transfers of the shared-memory communicator: send(x, dst) / recv(src).
//
// Every ordered pair (src, dst) owns a mailbox in the group segment (communicator.h),
// written only by src and read only by dst, so transfers between pairs never wait for
// the rest of the group and never touch the barrier of the collectives: a worker may
// interleave sends, receives and collectives freely, as long as each pair agrees on
// the order of its messages.
//
// A mailbox is a ring of kP2PDescs message descriptors (sequence number, Meta with the
// dtype name and shape, byte count, where the payload is) and a byte ring of
// Options::p2p_bytes. `sent` counts descriptors published by the sender, `taken` the
// messages the receiver has finished with; both only grow. A payload travels
//   - through the byte ring when it is small (at most a quarter of the ring), or when
//     the sender's arena has no room: the sender streams it in as space frees up, so
//     a message of any size passes through a ring of fixed size (the sender then waits
//     for the receiver, chunk by chunk);
//   - through the sender's arena otherwise: the sender copies it into a block of its
//     own arena, which the receiver reads in place (every rank maps every arena); the
//     block is freed by the sender once `taken` says the message was received (checked
//     at its next send to that receiver, or to anyone when the arena is full).
// So send returns as soon as x may be reused, without waiting for the receiver,
// unless the mailbox is full (kP2PDescs messages not yet received, or a payload larger
// than the free room of the ring and the arena): a ring exchange (every worker sends to
// the next, then receives from the previous) does not deadlock.
//
// Checks: the receiver compares the descriptor's dtype name and shape with what it
// expects; on a difference it still consumes the message (the pair stays in step) and
// throws a CclError naming both workers and both arrays. A receiver waiting longer than
// Options::timeout_s, or whose sender's process has died, throws a CclError saying
// what it waited for and which messages are waiting elsewhere (to this worker from
// other workers, or from its source to other workers), which is what a mixed-up peer
// looks like. A send stuck on a full mailbox times out the same way. A timeout in the
// middle of a payload leaves the pair out of step: its later transfers throw at once.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "ccl/communicator.h"

namespace disco {
namespace ccl {

constexpr uint32_t kP2PDescs = 8;

struct alignas(64) P2PDesc {
  uint32_t seq;        // message number on this pair, from 0
  uint32_t pad;
  uint64_t nbytes;     // payload bytes
  int64_t arena_off;   // payload offset in the sender's arena, or -1: through the byte ring
  Meta meta;           // ndim, shape and dtype_name of the array sent; meta.invalid: see p2p_send_invalid
  char problem[256];   // why the sender could not send (meta.invalid)
};

struct alignas(64) Mailbox {
  std::atomic<uint32_t> sent;          // descriptors published by the sender
  std::atomic<uint32_t> recv_bell;     // bumped by the sender whenever it publishes anything
  std::atomic<uint32_t> recv_waiters;  // receivers asleep on recv_bell
  char pad0[52];
  std::atomic<uint32_t> taken;         // messages the receiver is done with
  std::atomic<uint32_t> send_bell;     // bumped by the receiver whenever it consumes anything
  std::atomic<uint32_t> send_waiters;
  char pad1[52];
  std::atomic<uint64_t> wpos;          // bytes written into the ring, ever
  char pad2[56];
  std::atomic<uint64_t> rpos;          // bytes read from the ring, ever
  char pad3[56];
  P2PDesc desc[kP2PDescs];
  // followed by the byte ring, Options::p2p_bytes long
};

// Send x (`nbytes` bytes; `m` carries its ndim, shape and dtype_name) to rank `dst`.
void p2p_send(Communicator& c, const Meta& m, size_t nbytes, int dst, const void* x);
// This rank cannot send to `dst` with the arguments it was given (`problem` says why):
// post a message saying so, which the receiver raises instead of waiting until its
// timeout; then throw the problem here too.
[[noreturn]] void p2p_send_invalid(Communicator& c, int dst, const std::string& problem);
// Receive the next message from rank `src` into `out` (`nbytes` bytes), which must be
// an array as `want` describes (ndim, shape, dtype_name); CclError otherwise.
void p2p_recv(Communicator& c, const Meta& want, size_t nbytes, int src, void* out);
// Messages this rank sent to `dst` that dst has not received yet.
uint32_t p2p_unreceived(const Communicator& c, int dst);

}  // namespace ccl
}  // namespace disco
