// Point-to-point transfers through the per-pair mailboxes. See p2p.h.
#include "ccl/p2p.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>

namespace disco {
namespace ccl {

namespace {

// "a float32 array of shape (4, 5)"
std::string array_str(const Meta& m) {
  std::ostringstream s;
  s << "a " << m.dtype_name << " array of shape (";
  for (int i = 0; i < m.ndim; ++i) s << (i ? ", " : "") << m.shape[i];
  s << (m.ndim == 1 ? ",)" : ")");
  return s.str();
}

std::string w(int r) { return "worker " + std::to_string(r); }

bool same_array(const Meta& a, const Meta& b) {
  if (a.ndim != b.ndim || std::strncmp(a.dtype_name, b.dtype_name, sizeof(a.dtype_name)) != 0) return false;
  for (int i = 0; i < a.ndim; ++i) {
    if (a.shape[i] != b.shape[i]) return false;
  }
  return true;
}

enum class Wait { kOk, kTimeout, kDead };

// Wait until `ready()` holds, sleeping on `bell` (which the other side bumps whenever it
// makes progress) in short slices, until `deadline` or until rank `peer` has died.
template <typename Ready>
Wait wait_on(const Communicator& c, std::atomic<uint32_t>* bell, std::atomic<uint32_t>* waiters, int peer,
             double deadline, Ready ready) {
  if (ready()) return Wait::kOk;
  const double spin_end = now_seconds() + c.options().spin_us * 1e-6;
  while (now_seconds() < spin_end) {
    for (int i = 0; i < 128; ++i) {
      if (ready()) return Wait::kOk;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  }
  double next_check = now_seconds() + 0.05;
  for (;;) {
    waiters->fetch_add(1, std::memory_order_seq_cst);
    const uint32_t v = bell->load(std::memory_order_seq_cst);
    if (!ready()) bell_wait(bell, v, 2000000);
    waiters->fetch_sub(1, std::memory_order_seq_cst);
    if (ready()) return Wait::kOk;
    const double now = now_seconds();
    if (now > deadline) return Wait::kTimeout;
    if (now > next_check) {
      if (!c.peer_alive(peer)) return ready() ? Wait::kOk : Wait::kDead;
      next_check = now + 0.05;
    }
  }
}

void ring(std::atomic<uint32_t>* bell, std::atomic<uint32_t>* waiters) {
  bell->fetch_add(1, std::memory_order_seq_cst);
  if (waiters->load(std::memory_order_seq_cst) > 0) bell_wake(bell);
}

std::string seconds(double s) {
  std::ostringstream o;
  o << s << " s";
  return o.str();
}

// Free the arena blocks of messages to `dst` that dst has received.
void collect(Communicator& c, int dst) {
  auto& blocks = c.p2p_blocks[dst];
  const uint32_t taken = c.mailbox(c.rank(), dst)->taken.load(std::memory_order_acquire);
  while (!blocks.empty() && static_cast<int32_t>(taken - blocks.front().first) > 0) {
    c.arena_free(blocks.front().second);
    blocks.pop_front();
  }
}

// What waits where, for an error about a receive from `src` that never came: messages
// to this rank from other ranks, and messages from `src` to other ranks.
std::string elsewhere(const Communicator& c, int src) {
  std::string s;
  for (int p = 0; p < c.world(); ++p) {
    if (p == c.rank() || p == src) continue;
    const Mailbox* mb = c.mailbox(p, c.rank());
    const uint32_t n = mb->sent.load(std::memory_order_acquire) - mb->taken.load(std::memory_order_acquire);
    if (n > 0) {
      s += "; " + w(p) + " has sent " + std::to_string(n) + " message(s) to " + w(c.rank()) +
           " that it has not received (the first: " + array_str(mb->desc[mb->taken.load() % kP2PDescs].meta) +
           "; was src=" + std::to_string(p) + " meant?)";
    }
  }
  if (src >= 0 && src < c.world()) {
    for (int q = 0; q < c.world(); ++q) {
      if (q == src || q == c.rank()) continue;
      const Mailbox* mb = c.mailbox(src, q);
      const uint32_t n = mb->sent.load(std::memory_order_acquire) - mb->taken.load(std::memory_order_acquire);
      if (n > 0) {
        s += "; " + w(src) + " has sent " + std::to_string(n) + " message(s) to " + w(q) + " that are not received";
      }
    }
  }
  return s;
}

void check_peer(const Communicator& c, const char* what, const char* role, int peer) {
  if (peer < 0 || peer >= c.world()) {
    throw CclError(std::string(what) + ": " + w(c.rank()) + " gave " + role + " " + std::to_string(peer) +
                   ", which is not a worker of this group of " + std::to_string(c.world()));
  }
  if (peer == c.rank()) {
    throw CclError(std::string(what) + ": " + w(c.rank()) + " gave " + role + " " + std::to_string(peer) +
                   ", itself; a worker cannot send to or receive from itself");
  }
}

}  // namespace

uint32_t p2p_unreceived(const Communicator& c, int dst) {
  const Mailbox* mb = c.mailbox(c.rank(), dst);
  return mb->sent.load(std::memory_order_acquire) - mb->taken.load(std::memory_order_acquire);
}

void p2p_send(Communicator& c, const Meta& m, size_t nbytes, int dst, const void* x_v) {
  check_peer(c, "ccl.send", "dst", dst);
  const std::string who = "ccl.send: " + w(c.rank());
  if (c.p2p_send_broken[dst]) {
    throw CclError(who + ": an earlier send to " + w(dst) + " timed out in the middle of a message, so the two "
                   "are out of step; call disco.ccl.init again (sess.init_ccl) to make a new group");
  }
  Mailbox* mb = c.mailbox(c.rank(), dst);
  const double deadline = now_seconds() + c.options().timeout_s;
  const uint32_t seq = mb->sent.load(std::memory_order_relaxed);  // only this rank writes `sent`
  collect(c, dst);
  auto fail = [&](Wait why, const std::string& waiting_for) {
    if (why == Wait::kDead) {
      throw CclError(who + " gave up sending " + array_str(m) + " to " + w(dst) + ": the process of " + w(dst) +
                     " has died");
    }
    throw CclError(who + " timed out after " + seconds(c.options().timeout_s) + " sending " + array_str(m) + " to " +
                   w(dst) + ", waiting for it to " + waiting_for + " (did " + w(dst) + " call ccl.recv(shape, dtype, " +
                   std::to_string(c.rank()) + ")?)");
  };
  Wait got = wait_on(c, &mb->send_bell, &mb->send_waiters, dst, deadline, [&] {
    return seq - mb->taken.load(std::memory_order_acquire) < kP2PDescs;
  });
  if (got != Wait::kOk) fail(got, "receive earlier messages (" + std::to_string(kP2PDescs) + " are not received)");
  collect(c, dst);

  const auto* x = static_cast<const uint8_t*>(x_v);
  const size_t cap = c.options().p2p_bytes;
  int64_t off = -1;
  if (nbytes > cap / 4) {
    off = c.arena_alloc(nbytes);
    if (off < 0) {  // perhaps full of blocks other receivers are done with: free those, try again
      for (int q = 0; q < c.world(); ++q) {
        if (q != c.rank()) collect(c, q);
      }
      off = c.arena_alloc(nbytes);
    }
    if (off >= 0) std::memcpy(c.arena(c.rank()) + off, x, nbytes);
  }
  P2PDesc& d = mb->desc[seq % kP2PDescs];
  d.seq = seq;
  d.nbytes = nbytes;
  d.arena_off = off;
  d.meta = m;
  if (off >= 0) c.p2p_blocks[dst].push_back({seq, off});
  mb->sent.store(seq + 1, std::memory_order_release);
  ring(&mb->recv_bell, &mb->recv_waiters);
  if (off >= 0 || nbytes == 0) return;

  // The payload through the byte ring, as room frees up.
  uint8_t* buf = c.mailbox_ring(c.rank(), dst);
  uint64_t wpos = mb->wpos.load(std::memory_order_relaxed);
  for (size_t done = 0; done < nbytes;) {
    uint64_t rpos = 0;
    got = wait_on(c, &mb->send_bell, &mb->send_waiters, dst, deadline, [&] {
      rpos = mb->rpos.load(std::memory_order_acquire);
      return wpos - rpos < cap;
    });
    if (got != Wait::kOk) {
      c.p2p_send_broken[dst] = 1;
      fail(got, "read the message (" + std::to_string(nbytes - done) + " of its " + std::to_string(nbytes) +
                    " bytes are not sent yet)");
    }
    size_t n = std::min<size_t>(cap - (wpos - rpos), nbytes - done);
    const size_t at = wpos % cap, first = std::min(n, cap - at);
    std::memcpy(buf + at, x + done, first);
    std::memcpy(buf, x + done + first, n - first);
    wpos += n;
    done += n;
    mb->wpos.store(wpos, std::memory_order_release);
    ring(&mb->recv_bell, &mb->recv_waiters);
  }
}

[[noreturn]] void p2p_send_invalid(Communicator& c, int dst, const std::string& problem) {
  const std::string mine = "ccl.send: invalid arguments on " + w(c.rank()) + ": " + problem;
  if (dst < 0 || dst >= c.world() || dst == c.rank() || c.p2p_send_broken[dst]) throw CclError(mine);
  Mailbox* mb = c.mailbox(c.rank(), dst);
  const uint32_t seq = mb->sent.load(std::memory_order_relaxed);
  const Wait got = wait_on(c, &mb->send_bell, &mb->send_waiters, dst, now_seconds() + c.options().timeout_s, [&] {
    return seq - mb->taken.load(std::memory_order_acquire) < kP2PDescs;
  });
  if (got == Wait::kOk) {
    P2PDesc& d = mb->desc[seq % kP2PDescs];
    d.seq = seq;
    d.nbytes = 0;
    d.arena_off = -1;
    d.meta = Meta{};
    d.meta.invalid = 1;
    std::snprintf(d.problem, sizeof(d.problem), "%s", problem.c_str());
    mb->sent.store(seq + 1, std::memory_order_release);
    ring(&mb->recv_bell, &mb->recv_waiters);
  }
  throw CclError(mine);
}

void p2p_recv(Communicator& c, const Meta& want, size_t nbytes, int src, void* out_v) {
  check_peer(c, "ccl.recv", "src", src);
  const std::string who = "ccl.recv: " + w(c.rank());
  if (c.p2p_recv_broken[src]) {
    throw CclError(who + ": an earlier receive from " + w(src) + " timed out in the middle of a message, so the two "
                   "are out of step; call disco.ccl.init again (sess.init_ccl) to make a new group");
  }
  Mailbox* mb = c.mailbox(src, c.rank());
  const double deadline = now_seconds() + c.options().timeout_s;
  const uint32_t seq = mb->taken.load(std::memory_order_relaxed);  // only this rank writes `taken`
  Wait got = wait_on(c, &mb->recv_bell, &mb->recv_waiters, src, deadline, [&] {
    return mb->sent.load(std::memory_order_acquire) != seq;
  });
  if (got == Wait::kDead) {
    throw CclError(who + " gave up waiting for " + array_str(want) + " from " + w(src) + ": the process of " + w(src) +
                   " has died");
  }
  if (got == Wait::kTimeout) {
    throw CclError(who + " timed out after " + seconds(c.options().timeout_s) + " waiting for " + array_str(want) +
                   " from " + w(src) + ", which has sent nothing more to it (did " + w(src) + " call ccl.send(x, " +
                   std::to_string(c.rank()) + ")?)" + elsewhere(c, src));
  }
  const P2PDesc d = mb->desc[seq % kP2PDescs];
  if (d.meta.invalid) {
    mb->taken.store(seq + 1, std::memory_order_release);
    ring(&mb->send_bell, &mb->send_waiters);
    throw CclError(who + " expected " + array_str(want) + " from " + w(src) + ", which could not send it: " +
                   "invalid arguments on " + w(src) + ": " + d.problem);
  }
  const bool match = same_array(d.meta, want) && d.nbytes == nbytes;
  auto* out = static_cast<uint8_t*>(out_v);
  if (d.arena_off >= 0) {
    if (match) std::memcpy(out, c.arena(src) + d.arena_off, nbytes);
  } else {
    const size_t cap = c.options().p2p_bytes;
    const uint8_t* buf = c.mailbox_ring(src, c.rank());
    uint64_t rpos = mb->rpos.load(std::memory_order_relaxed);
    for (size_t done = 0; done < d.nbytes;) {
      uint64_t wpos = 0;
      got = wait_on(c, &mb->recv_bell, &mb->recv_waiters, src, deadline, [&] {
        wpos = mb->wpos.load(std::memory_order_acquire);
        return wpos != rpos;
      });
      if (got != Wait::kOk) {
        c.p2p_recv_broken[src] = 1;
        throw CclError(who + (got == Wait::kDead ? " gave up" : " timed out after " + seconds(c.options().timeout_s)) +
                       " in the middle of a message from " + w(src) + " (" + std::to_string(d.nbytes - done) + " of " +
                       std::to_string(d.nbytes) + " bytes missing" +
                       (got == Wait::kDead ? "; its process has died)" : ")"));
      }
      const size_t n = std::min<size_t>(wpos - rpos, d.nbytes - done);
      if (match) {
        const size_t at = rpos % cap, first = std::min(n, cap - at);
        std::memcpy(out + done, buf + at, first);
        std::memcpy(out + done + first, buf, n - first);
      }
      rpos += n;
      done += n;
      mb->rpos.store(rpos, std::memory_order_release);
      ring(&mb->send_bell, &mb->send_waiters);
    }
  }
  mb->taken.store(seq + 1, std::memory_order_release);
  ring(&mb->send_bell, &mb->send_waiters);
  if (!match) {
    throw CclError(who + " expected " + array_str(want) + " from " + w(src) + ", but " + w(src) + " sent " +
                   array_str(d.meta) + " (its message " + std::to_string(seq) + " to " + w(c.rank()) +
                   "; dropped, so the next recv from " + w(src) + " gets its next message)");
  }
}

}  // namespace ccl
}  // namespace disco
