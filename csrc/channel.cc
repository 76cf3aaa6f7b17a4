// Segment set-up, the ring, reply slots and the spin-then-futex wait. See channel.h.
#include "channel.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <random>

namespace disco {
namespace channel {
namespace {

constexpr uint64_t kMagic = 0x6469736330636831ull;  // "disc0ch1"
constexpr uint64_t kAlign = 16;                      // messages start 16-byte aligned

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected, double timeout_s) {
  if (timeout_s <= 0) return;
  timespec ts;
  ts.tv_sec = static_cast<time_t>(timeout_s);
  ts.tv_nsec = static_cast<long>((timeout_s - double(ts.tv_sec)) * 1e9);
  // Not FUTEX_PRIVATE_FLAG: the waiters live in other processes.
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futex_wake_all(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

// Wait until ready(): spin `spin_us`, then sleep on `futex`. False on timeout.
// The spin yields the core (sched_yield) after two pauses: controller and workers are
// often more processes than cores, and a waiter that keeps its core only delays the
// process it waits for (measured on 2 cores, 3 processes: pausing 256 times before
// yielding cost 70 us per round trip, yielding at once 13 us).
template <class Ready>
bool spin_then_sleep(Ready ready, std::atomic<uint32_t>* futex, std::atomic<uint32_t>* sleepers,
                     double spin_us, double timeout_s) {
  if (ready()) return true;
  const auto t0 = Clock::now();
  const double spin_s = std::min(spin_us * 1e-6, timeout_s);
  for (int i = 0;; ++i) {
    if (ready()) return true;
    if ((i & 15) == 15 && seconds_since(t0) >= spin_s) break;
    if (i < 2) {  // see above: yield early
      __builtin_ia32_pause();
    } else {
      sched_yield();
    }
  }
  for (;;) {
    const uint32_t v = futex->load(std::memory_order_acquire);
    sleepers->fetch_add(1, std::memory_order_seq_cst);
    if (ready()) {
      sleepers->fetch_sub(1, std::memory_order_seq_cst);
      return true;
    }
    const double left = timeout_s - seconds_since(t0);
    if (left <= 0) {
      sleepers->fetch_sub(1, std::memory_order_seq_cst);
      return false;
    }
    futex_wait(futex, v, left);
    sleepers->fetch_sub(1, std::memory_order_seq_cst);
  }
}

std::string unique_name(const char* what) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  return std::string("/disco-") + what + "-" + std::to_string(getpid()) + "-" +
         std::to_string(counter.fetch_add(1)) + "-" + std::to_string(rd());
}

}  // namespace

int CreateAnonymousSegment(uint64_t nbytes) {
  const std::string name = unique_name("buf");
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) throw ChannelError("shm_open(" + name + ") failed: " + std::strerror(errno));
  shm_unlink(name.c_str());  // lives on through fd and mappings only
  if (ftruncate(fd, static_cast<off_t>(std::max<uint64_t>(nbytes, 1))) != 0) {
    int e = errno;
    close(fd);
    throw ChannelError("ftruncate(" + std::to_string(nbytes) + ") of a shared-memory buffer failed: " +
                       std::strerror(e));
  }
  // Reserve the pages now: a full /dev/shm then fails here, with a message, instead of
  // killing the process with SIGBUS when a page is first written.
  if (nbytes > 0 && fallocate(fd, 0, 0, static_cast<off_t>(nbytes)) != 0 && errno != EOPNOTSUPP) {
    int e = errno;
    close(fd);
    throw ChannelError("no room for a " + std::to_string(nbytes) + "-byte shared-memory segment in /dev/shm (" +
                       std::strerror(e) + "); free shared memory or enlarge /dev/shm (docker: --shm-size)");
  }
  return fd;
}

Channel::Channel(const Options& opts) {
  if (opts.num_workers < 1) throw ChannelError("num_workers must be >= 1, got " + std::to_string(opts.num_workers));
  const uint64_t ring = align_up(std::max<uint64_t>(opts.ring_bytes, 1 << 16), 4096);
  const uint32_t reply = static_cast<uint32_t>(align_up(std::max<uint32_t>(opts.reply_bytes, 4096), 64));
  const size_t total = align_up(sizeof(Header) + opts.num_workers * (sizeof(WorkerBlock) + reply), 4096) + ring;
  fd_ = CreateAnonymousSegment(total);
  Map(total);
  hdr_->magic = kMagic;
  hdr_->num_workers = opts.num_workers;
  hdr_->reply_bytes = reply;
  hdr_->ring_bytes = ring;
  hdr_->spin_us = opts.spin_us;
  Map(total);  // recompute the area pointers now that the sizes are in the header
}

Channel::Channel(int fd, int worker_id) : worker_id_(worker_id) {
  struct stat st;
  if (fstat(fd, &st) != 0) throw ChannelError(std::string("fstat of the channel fd failed: ") + std::strerror(errno));
  fd_ = dup(fd);
  Map(static_cast<size_t>(st.st_size));
  if (hdr_->magic != kMagic) throw ChannelError("fd " + std::to_string(fd) + " is not a disco channel (bad magic)");
  if (worker_id < 0 || worker_id >= hdr_->num_workers)
    throw ChannelError("worker_id " + std::to_string(worker_id) + " out of range [0, " +
                       std::to_string(hdr_->num_workers) + ")");
  blk(worker_id)->attached.store(1, std::memory_order_release);
}

void Channel::Map(size_t total) {
  if (base_ == nullptr) {
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) throw ChannelError(std::string("mmap of the channel failed: ") + std::strerror(errno));
    base_ = static_cast<uint8_t*>(p);
    total_ = total;
  }
  hdr_ = reinterpret_cast<Header*>(base_);
  blocks_ = reinterpret_cast<WorkerBlock*>(base_ + sizeof(Header));
  replies_ = base_ + sizeof(Header) + hdr_->num_workers * sizeof(WorkerBlock);
  ring_ = base_ + total_ - hdr_->ring_bytes;
}

Channel::~Channel() {
  if (base_ != nullptr) munmap(base_, total_);
  if (fd_ >= 0) close(fd_);
}

uint8_t* Channel::Reserve(uint64_t len, double timeout_s) {
  const uint64_t ring = hdr_->ring_bytes;
  const uint64_t msg = align_up(sizeof(MsgHeader) + len, kAlign);
  if (msg > max_message())
    throw ChannelError("command of " + std::to_string(len) + " bytes exceeds the ring's limit of " +
                       std::to_string(max_message()) + " bytes (a quarter of its " + std::to_string(ring) +
                       " bytes)");
  const uint64_t pos = hdr_->write_pos.load(std::memory_order_relaxed);
  const uint64_t off = pos % ring;
  const uint64_t skip = off + msg > ring ? ring - off : 0;  // wrap marker + padding
  const uint64_t end = pos + skip + msg;
  auto room = [&] {
    for (int w = 0; w < hdr_->num_workers; ++w)
      if (end - blk(w)->read_pos.load(std::memory_order_acquire) > ring) return false;
    return true;
  };
  if (!room()) {
    const auto t0 = Clock::now();
    while (!room()) {
      if (seconds_since(t0) >= timeout_s) return nullptr;
      sched_yield();
    }
  }
  if (skip) reinterpret_cast<MsgHeader*>(ring_ + off)->len = 0;
  pending_start_ = pos + skip;
  pending_pos_ = end;
  auto* h = reinterpret_cast<MsgHeader*>(ring_ + pending_start_ % ring);
  h->len = static_cast<uint32_t>(msg);
  return ring_ + pending_start_ % ring + sizeof(MsgHeader);
}

uint64_t Channel::Publish() {
  const uint64_t seq = hdr_->seq.load(std::memory_order_relaxed) + 1;
  reinterpret_cast<MsgHeader*>(ring_ + pending_start_ % hdr_->ring_bytes)->seq = seq;
  hdr_->seq.store(seq, std::memory_order_relaxed);
  hdr_->write_pos.store(pending_pos_, std::memory_order_seq_cst);
  hdr_->cmd_futex.fetch_add(1, std::memory_order_seq_cst);
  if (hdr_->cmd_sleepers.load(std::memory_order_seq_cst) > 0) futex_wake_all(&hdr_->cmd_futex);
  return seq;
}

bool Channel::WaitReply(int w, uint64_t seq, double timeout_s) {
  WorkerBlock* b = blk(w);
  return spin_then_sleep([&] { return b->reply_seq.load(std::memory_order_seq_cst) >= seq; },
                         &b->reply_futex, &b->ctrl_sleeping, hdr_->spin_us, timeout_s);
}

const uint8_t* Channel::Reply(int w, uint32_t* status, uint32_t* len) const {
  *status = blk(w)->reply_status;
  *len = blk(w)->reply_len;
  return replies_ + uint64_t(w) * hdr_->reply_bytes;
}

void Channel::Close() {
  hdr_->closed.store(1, std::memory_order_seq_cst);
  hdr_->cmd_futex.fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&hdr_->cmd_futex);
}

bool Channel::WaitCommand(double timeout_s) {
  WorkerBlock* me = blk(worker_id_);
  return spin_then_sleep(
      [&] {
        return hdr_->write_pos.load(std::memory_order_seq_cst) > me->read_pos.load(std::memory_order_relaxed) ||
               hdr_->closed.load(std::memory_order_relaxed);
      },
      &hdr_->cmd_futex, &hdr_->cmd_sleepers, hdr_->spin_us, timeout_s);
}

const uint8_t* Channel::Peek(uint32_t* len, uint64_t* seq) {
  WorkerBlock* me = blk(worker_id_);
  const uint64_t ring = hdr_->ring_bytes;
  uint64_t pos = me->read_pos.load(std::memory_order_relaxed);
  if (hdr_->write_pos.load(std::memory_order_acquire) <= pos) return nullptr;
  auto* h = reinterpret_cast<const MsgHeader*>(ring_ + pos % ring);
  if (h->len == 0) {  // wrap marker: the message starts at the ring's beginning
    pos += ring - pos % ring;
    h = reinterpret_cast<const MsgHeader*>(ring_);
  }
  *len = h->len - static_cast<uint32_t>(sizeof(MsgHeader));
  *seq = peek_seq_ = h->seq;
  peek_end_ = pos + h->len;
  return reinterpret_cast<const uint8_t*>(h) + sizeof(MsgHeader);
}

void Channel::Pop() {
  WorkerBlock* me = blk(worker_id_);
  me->read_pos.store(peek_end_, std::memory_order_release);
  me->consumed_seq.store(peek_seq_, std::memory_order_release);
}

void Channel::PostReply(uint64_t seq, uint32_t status, uint32_t len) {
  WorkerBlock* b = blk(worker_id_);
  b->reply_status = status;
  b->reply_len = len;
  b->reply_seq.store(seq, std::memory_order_seq_cst);
  b->reply_futex.fetch_add(1, std::memory_order_seq_cst);
  if (b->ctrl_sleeping.load(std::memory_order_seq_cst) > 0) futex_wake_all(&b->reply_futex);
}

}  // namespace channel
}  // namespace disco
