// Segment set-up, the futex-backed barrier, and Meta checks. See communicator.h.
#include "ccl/communicator.h"

#include <signal.h>

#include "ccl/p2p.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <thread>
#include <vector>

namespace disco {
namespace ccl {

namespace {

constexpr uint64_t kMagic = 0x6469736363636c31ull;  // "disccl1"

struct alignas(64) Header {
  std::atomic<uint64_t> magic;  // written last by rank 0, once everything else is set
  uint32_t world;
  uint32_t pad;
  uint64_t chunk_bytes;
  uint64_t total_bytes;
  char secret[kSecretBytes];  // Options::secret, zero-padded
};

struct alignas(64) RankCtl {
  std::atomic<uint32_t> arrive;   // number of the last barrier this rank reached
  std::atomic<uint32_t> waiters;  // ranks sleeping on `arrive` (futex); wake them if > 0
  std::atomic<int32_t> joined;    // pid of the process that joined as this rank, 0 before
  char pad[52];
  Meta meta[2];                   // one per half, see communicator.h
  char problem[2][kProblemBytes]; // per half: why this rank's arguments were invalid
};

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Shared (not FUTEX_PRIVATE) so that it works across processes as well as threads.
void futex_wait(std::atomic<uint32_t>* addr, uint32_t expected, long timeout_ns) {
  struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>* addr) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

inline bool reached(uint32_t arrived, uint32_t epoch) {
  return static_cast<int32_t>(arrived - epoch) >= 0;  // wrap-around safe
}

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace

double now_seconds() { return now_s(); }
void bell_wait(std::atomic<uint32_t>* bell, uint32_t expected, long timeout_ns) { futex_wait(bell, expected, timeout_ns); }
void bell_wake(std::atomic<uint32_t>* bell) { futex_wake(bell); }

namespace {

std::string shm_name(const std::string& group) {
  std::string n = "/disco_ccl_";
  for (char c : group) n += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') ? c : '_';
  if (n.size() > 200) n.resize(200);
  return n;
}

std::string seconds(double s) {
  std::ostringstream o;
  o << s << " s";
  return o.str();
}

// "sum, prod, min, max": the ops a collective accepts, from op_name.
std::string accepted_ops() {
  std::string s;
  for (int i = 0; i < kNumOps; ++i) s += (i ? ", " : "") + std::string(op_name(static_cast<Op>(i)));
  return s;
}

// "float32, float64, ...": the dtypes the collectives support, from dtype_name.
std::string supported_dtypes() {
  std::string s;
  for (int i = 0; i < kNumDTypes; ++i) s += (i ? ", " : "") + std::string(dtype_name(static_cast<DType>(i)));
  return s;
}

std::string shape_str(const Meta& m) {
  if (m.ndim < 0) return "None";
  std::ostringstream s;
  s << "(";
  for (int i = 0; i < m.ndim; ++i) s << (i ? ", " : "") << m.shape[i];
  s << (m.ndim == 1 ? ",)" : ")");
  return s.str();
}

// Whether /dev/shm can give `grow` more bytes to an arena and still keep
// max(64 MiB, 1/8 of its size) free for the command ring, transfer buffers and other
// groups' segments, which must never be the ones that find it full.
bool room_in_shm(int fd, size_t grow) {
  struct statvfs sv;
  if (fstatvfs(fd, &sv) != 0) return true;  // unknown: fallocate still guards
  const uint64_t avail = uint64_t(sv.f_bavail) * sv.f_frsize, size = uint64_t(sv.f_blocks) * sv.f_frsize;
  const uint64_t headroom = std::max<uint64_t>(64ull << 20, size / 8);
  return avail >= grow + headroom;
}

}  // namespace

void copy_out(void* dst_v, const void* src_v, size_t n, bool stream) {
#if defined(__x86_64__)
  if (stream && n >= 256) {
    auto* dst = static_cast<uint8_t*>(dst_v);
    const auto* src = static_cast<const uint8_t*>(src_v);
    const size_t head = (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16;
    std::memcpy(dst, src, head);
    dst += head, src += head, n -= head;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
    std::memcpy(dst + i, src + i, n - i);
    return;
  }
#endif
  std::memcpy(dst_v, src_v, n);
}

void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

const char* coll_name(Coll c) {
  static const char* names[] = {"ccl.init", "ccl.barrier", "ccl.allreduce", "ccl.allgather",
                                "ccl.reduce_scatter", "ccl.broadcast_from_worker0",
                                "ccl.scatter_from_worker0", "ccl.gather_to_worker0"};
  int i = static_cast<int>(c);
  return i >= 0 && i < 8 ? names[i] : "ccl.unknown";
}

Coll coll_from_name(const std::string& name) {
  for (int i = 0; i < 8; ++i) {
    if (coll_name(static_cast<Coll>(i)) == "ccl." + name) return static_cast<Coll>(i);
  }
  throw CclError("ccl: no collective named '" + name + "'");
}

namespace {
// Why a segment opened as `fd` must not be joined ("" when it may): not a regular file
// of this user, or open to others.
std::string unsafe_segment(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0) return std::string("fstat failed: ") + std::strerror(errno);
  if (!S_ISREG(st.st_mode)) return "it is not a regular file";
  if (st.st_uid != geteuid()) {
    return "it is owned by uid " + std::to_string(st.st_uid) + ", not by this user (uid " + std::to_string(geteuid()) + ")";
  }
  if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%o", static_cast<unsigned>(st.st_mode & 0777));
    return std::string("its mode is ") + mode + ", not 600 (others could read or write it)";
  }
  return "";
}
}  // namespace

static RankCtl* ctl_at(uint8_t* base, size_t off, int r) {
  return reinterpret_cast<RankCtl*>(base + off) + r;
}

Communicator::Communicator(const std::string& group, int rank, int world, const Options& opts)
    : name_(shm_name(group)), rank_(rank), world_(world), opts_(opts) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw CclError("ccl.init: rank " + std::to_string(rank) + " is not in [0, " + std::to_string(world) + ")");
  }
  if (opts.secret.size() > kSecretBytes) {
    throw CclError("ccl.init: the group secret has " + std::to_string(opts.secret.size()) + " bytes, at most " +
                   std::to_string(kSecretBytes) + " allowed");
  }
  char secret[kSecretBytes] = {};
  std::memcpy(secret, opts.secret.data(), opts.secret.size());
  opts_.chunk_bytes = round_up(opts_.chunk_bytes < 4096 ? 4096 : opts_.chunk_bytes, 4096);
  if (opts_.small_bytes > opts_.chunk_bytes) opts_.small_bytes = opts_.chunk_bytes;
  ctl_off_ = round_up(sizeof(Header), 4096);
  data_off_ = round_up(ctl_off_ + sizeof(RankCtl) * world, 4096);
  opts_.arena_bytes = round_up(opts_.arena_bytes, 2 << 20);
  opts_.p2p_bytes = round_up(opts_.p2p_bytes < 4096 ? 4096 : opts_.p2p_bytes, 4096);
  p2p_off_ = data_off_ + 4 * opts_.chunk_bytes * world;
  mailbox_stride_ = round_up(sizeof(Mailbox), 4096) + opts_.p2p_bytes;
  arena_off_ = p2p_off_ + mailbox_stride_ * static_cast<size_t>(world) * world;
  p2p_blocks.resize(world);
  p2p_send_broken.assign(world, 0);
  p2p_recv_broken.assign(world, 0);
  const size_t total = arena_off_ + opts_.arena_bytes * world;
  if (opts_.arena_bytes > 0) arena_free_[0] = opts_.arena_bytes;
  const double deadline = now_s() + opts_.timeout_s;

  int fd = -1;
  if (rank == 0) {
    fd = shm_open(name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 && errno == EEXIST) {  // never unlinked here: it may be another live group's
      throw CclError("ccl.init: worker 0 cannot create " + name_ + ": the name exists (another group of the "
                     "same name, or one a crashed run left, which sessions sweep once its creator is dead); "
                     "use a unique group name");
    }
    if (fd < 0) throw CclError("ccl.init: shm_open(" + name_ + ") failed: " + std::strerror(errno));
    if (ftruncate(fd, static_cast<off_t>(total)) != 0) {
      int err = errno;
      close(fd);
      shm_unlink(name_.c_str());
      throw CclError("ccl.init: ftruncate(" + name_ + ", " + std::to_string(total) + ") failed: " + std::strerror(err));
    }
    // Reserve everything but the arenas (reserved as they are used): a full /dev/shm
    // fails here instead of with SIGBUS at the first collective.
    if (fallocate(fd, 0, 0, static_cast<off_t>(arena_off_)) != 0 && errno != EOPNOTSUPP) {
      int err = errno;
      close(fd);
      shm_unlink(name_.c_str());
      throw CclError("ccl.init: no room for the " + std::to_string(arena_off_) + "-byte segment " + name_ +
                     " in /dev/shm (" + std::strerror(err) + "); free shared memory or enlarge /dev/shm "
                     "(docker: --shm-size)");
    }
  } else {
    // Attach: wait for the segment to exist, be full size, and carry the magic.
    const std::string who = "ccl.init: worker " + std::to_string(rank) + " refuses to join " + name_ + ": ";
    for (;;) {
      fd = shm_open(name_.c_str(), O_RDWR, 0600);  // glibc adds O_NOFOLLOW: a symbolic link gives ELOOP
      if (fd < 0 && errno != ENOENT) {
        throw CclError("ccl.init: worker " + std::to_string(rank) + " cannot open " + name_ + ": " +
                       std::strerror(errno) + (errno == ELOOP ? " (a symbolic link is at that name)" : ""));
      }
      if (fd >= 0) {
        const std::string unsafe = unsafe_segment(fd);
        if (!unsafe.empty()) {
          close(fd);
          throw CclError(who + unsafe);
        }
        struct stat st;
        if (fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) >= sizeof(Header)) {
          void* p = mmap(nullptr, sizeof(Header), PROT_READ, MAP_SHARED, fd, 0);
          if (p != MAP_FAILED) {
            auto* h = static_cast<Header*>(p);
            const bool ok = h->magic.load(std::memory_order_acquire) == kMagic;
            const uint32_t w = h->world;
            const uint64_t tb = h->total_bytes;
            const bool same_secret = std::memcmp(h->secret, secret, kSecretBytes) == 0;
            munmap(p, sizeof(Header));
            if (ok && !same_secret) {
              close(fd);
              throw CclError(who + "it belongs to another group (its secret differs; two jobs using one group "
                             "name?)");
            }
            if (ok && (w != static_cast<uint32_t>(world) || tb != total)) {
              close(fd);
              throw CclError("ccl.init: worker " + std::to_string(rank) + " expected a group of " +
                             std::to_string(world) + " workers with " + std::to_string(total) +
                             "-byte segment, segment " + name_ + " has " + std::to_string(w) +
                             " workers and " + std::to_string(tb) + " bytes (same group name, other options?)");
            }
            if (ok) break;
          }
        }
        close(fd);
        fd = -1;
      }
      if (now_s() > deadline) {
        throw CclError("ccl.init: worker " + std::to_string(rank) + " timed out after " +
                       seconds(opts_.timeout_s) + " waiting for worker 0 to create " + name_);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int mmap_errno = errno;
  fd_ = fd;
  if (p == MAP_FAILED) {
    close(fd_);
    fd_ = -1;
    if (rank == 0) shm_unlink(name_.c_str());  // peers time out waiting for it; leave no name behind
    throw CclError("ccl.init: mmap of " + name_ + " failed: " + std::strerror(mmap_errno));
  }
  base_ = static_cast<uint8_t*>(p);
  size_ = total;
  if (rank == 0) {
    auto* h = reinterpret_cast<Header*>(base_);
    h->world = static_cast<uint32_t>(world);
    h->chunk_bytes = opts_.chunk_bytes;
    h->total_bytes = total;
    std::memcpy(h->secret, secret, kSecretBytes);
    h->magic.store(kMagic, std::memory_order_release);
  }
  int32_t expected = 0;  // claim this rank's slot: a second process as the same rank is refused
  if (!ctl_at(base_, ctl_off_, rank)->joined.compare_exchange_strong(expected, static_cast<int32_t>(getpid()))) {
    munmap(base_, size_);
    base_ = nullptr;
    close(fd_);
    fd_ = -1;
    throw CclError("ccl.init: worker " + std::to_string(rank) + " refuses to join " + name_ + ": rank " +
                   std::to_string(rank) + " was already joined by pid " + std::to_string(expected) +
                   " (two groups using one name?)");
  }
  try {
    barrier(Coll::kInit);  // everyone attached
  } catch (...) {
    // The group never formed (a rank missing or dead): worker 0, which made the name,
    // unlinks it so that it does not outlive the group in /dev/shm.
    if (rank == 0) shm_unlink(name_.c_str());
    munmap(base_, size_);
    base_ = nullptr;
    close(fd_);
    fd_ = -1;
    throw;
  }
  if (rank == 0) shm_unlink(name_.c_str());
}

Communicator::~Communicator() {
  if (base_) munmap(base_, size_);
  if (fd_ >= 0) close(fd_);
}

int64_t Communicator::arena_alloc(size_t nbytes) {
  if (nbytes > opts_.arena_bytes) return -1;
  const size_t want = round_up(nbytes == 0 ? 1 : nbytes, 256);
  std::lock_guard<std::mutex> lock(arena_mu_);
  for (auto it = arena_free_.begin(); it != arena_free_.end(); ++it) {  // first fit
    if (it->second < want) continue;
    const size_t off = it->first, end = off + want;
    if (end > arena_reserved_) {  // first use of these pages: reserve them now (see the file comment)
      const size_t upto = std::min(round_up(end, 2 << 20), opts_.arena_bytes);
      if (!room_in_shm(fd_, upto - arena_reserved_)) return -1;
      const off_t at = static_cast<off_t>(arena(rank_) - base_ + arena_reserved_);
      if (fallocate(fd_, 0, at, static_cast<off_t>(upto - arena_reserved_)) != 0) return -1;
      arena_reserved_ = upto;
    }
    const size_t rest = it->second - want;
    arena_free_.erase(it);
    if (rest > 0) arena_free_[end] = rest;
    arena_used_[off] = want;
    return static_cast<int64_t>(off);
  }
  return -1;
}

void Communicator::arena_free(int64_t off_i) {
  std::lock_guard<std::mutex> lock(arena_mu_);
  auto used = arena_used_.find(static_cast<size_t>(off_i));
  if (used == arena_used_.end()) return;
  size_t off = used->first, len = used->second;
  arena_used_.erase(used);
  auto next = arena_free_.lower_bound(off);
  if (next != arena_free_.end() && next->first == off + len) {  // merge with the block after
    len += next->second;
    next = arena_free_.erase(next);
  }
  if (next != arena_free_.begin()) {  // and with the one before
    auto prev = std::prev(next);
    if (prev->first + prev->second == off) {
      prev->second += len;
      return;
    }
  }
  arena_free_[off] = len;
}

int64_t Communicator::arena_offset(const void* p, size_t nbytes) const {
  if (opts_.arena_bytes == 0 || p == nullptr) return -1;
  const auto* q = static_cast<const uint8_t*>(p);
  const uint8_t* lo = arena(rank_);
  if (q < lo || q + nbytes > lo + opts_.arena_bytes) return -1;
  return q - lo;
}

Mailbox* Communicator::mailbox(int src, int dst) const {
  return reinterpret_cast<Mailbox*>(base_ + p2p_off_ + mailbox_stride_ * (static_cast<size_t>(src) * world_ + dst));
}

uint8_t* Communicator::mailbox_ring(int src, int dst) const {
  return reinterpret_cast<uint8_t*>(mailbox(src, dst)) + (mailbox_stride_ - opts_.p2p_bytes);
}

bool Communicator::peer_alive(int p) const {
  const pid_t pid = ctl_at(base_, ctl_off_, p)->joined.load();
  if (pid <= 0 || pid == getpid()) return true;  // not recorded yet, or a thread of this process
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return true;  // no /proc: trust kill()
  char buf[512];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* close_paren = std::strrchr(buf, ')');  // "pid (comm) S ..."
  return !(close_paren && close_paren[1] == ' ' && (close_paren[2] == 'Z' || close_paren[2] == 'X'));
}

uint8_t* Communicator::slot(int r, int half, int area) const {
  return base_ + data_off_ + opts_.chunk_bytes * (4 * static_cast<size_t>(r) + 2 * half + area);
}


void Communicator::post(const Meta& m) { ctl_at(base_, ctl_off_, rank_)->meta[epoch_ & 1] = m; }

const Meta& Communicator::peer_meta(int peer) const {
  return ctl_at(base_, ctl_off_, peer)->meta[(epoch_ + 1) & 1];
}

void Communicator::ensure_usable(Coll coll) const {
  if (broken_) {
    throw CclError(std::string(coll_name(coll)) +
                   ": this communicator timed out earlier and its workers are out of step; "
                   "call disco.ccl.init again (sess.init_ccl) to make a new one");
  }
}

[[noreturn]] void Communicator::fail_arguments(Coll coll, const std::string& problem) {
  ensure_usable(coll);
  Meta m{};
  m.coll = static_cast<int32_t>(coll);
  m.ndim = -1;
  m.invalid = 1;
  post(m);
  char* text = ctl_at(base_, ctl_off_, rank_)->problem[epoch_ & 1];
  std::snprintf(text, kProblemBytes, "%s", problem.c_str());
  barrier(coll);
  check(m, 0);  // throws: this rank's own Meta is invalid
  throw CclError(std::string(coll_name(coll)) + ": worker " + std::to_string(rank_) + " gave invalid arguments: " + problem);
}

namespace {
// "worker 1" or "workers 0, 2".
std::string workers_str(const std::vector<int>& ws) {
  std::string s = ws.size() > 1 ? "workers " : "worker ";
  for (size_t i = 0; i < ws.size(); ++i) s += (i ? ", " : "") + std::to_string(ws[i]);
  return s;
}
}  // namespace

// Throws, on every rank alike, if any rank posted invalid arguments (fail_arguments);
// ranks that posted the same problem are named together.
void Communicator::check_arguments_valid() const {
  std::vector<int> bad;
  std::vector<std::pair<std::string, std::vector<int>>> problems;  // in order of first worker
  for (int p = 0; p < world_; ++p) {
    if (!peer_meta(p).invalid) continue;
    bad.push_back(p);
    const std::string text = ctl_at(base_, ctl_off_, p)->problem[(epoch_ + 1) & 1];
    auto same = std::find_if(problems.begin(), problems.end(), [&](const auto& q) { return q.first == text; });
    if (same == problems.end()) {
      problems.push_back({text, {p}});
    } else {
      same->second.push_back(p);
    }
  }
  if (bad.empty()) return;
  std::string msg = std::string(coll_name(static_cast<Coll>(peer_meta(bad[0]).coll))) + ": invalid arguments on " +
                    workers_str(bad);
  if (problems.size() == 1) {
    msg += ": " + problems[0].first;
  } else {
    for (size_t i = 0; i < problems.size(); ++i) {
      msg += (i ? "; " : ": ") + workers_str(problems[i].second) + ": " + problems[i].first;
    }
  }
  throw CclError(msg + " (raised on every worker; the group stays usable)");
}

const Meta& Communicator::check(const Meta& mine, unsigned flags) const {
  check_arguments_valid();
  const Meta& root = peer_meta(0);
  const std::string cname = coll_name(static_cast<Coll>(mine.coll));
  for (int p = 0; p < world_; ++p) {
    const Meta& m = peer_meta(p);
    const std::string who = cname + ": worker " + std::to_string(p);
    if (m.coll != root.coll) {
      throw CclError(who + " called " + coll_name(static_cast<Coll>(m.coll)) + ", expected " +
                     coll_name(static_cast<Coll>(root.coll)) + " as on worker 0 (workers must call collectives in the same order)");
    }
    if (m.ndim >= 0 && m.dtype < 0) {
      throw CclError(who + " gave dtype " + std::string(m.dtype_name) +
                     ", which is not supported; expected one of " + supported_dtypes());
    }
    if ((flags & kCheckOp) && (m.op < 0 || m.op >= kNumOps)) {
      throw CclError(who + " gave an unknown op (code " + std::to_string(m.op) + "); expected one of " +
                     accepted_ops());
    }
    if (p == 0 || m.ndim < 0 || root.ndim < 0) continue;
    if ((flags & kCheckDType) && m.dtype != root.dtype) {
      throw CclError(who + " gave dtype " + dtype_name(static_cast<DType>(m.dtype)) + ", expected " +
                     dtype_name(static_cast<DType>(root.dtype)) + " as on worker 0");
    }
    if ((flags & kCheckOp) && m.op != root.op) {
      throw CclError(who + " gave op " + op_name(static_cast<Op>(m.op)) + ", expected " +
                     op_name(static_cast<Op>(root.op)) + " as on worker 0");
    }
    if ((flags & kCheckAxis) && norm_axis(m) != norm_axis(root)) {
      throw CclError(who + " gave axis " + std::to_string(m.axis) + ", expected " +
                     std::to_string(root.axis) + " as on worker 0");
    }
    if (flags & kCheckShape) {
      bool same = m.ndim == root.ndim;
      for (int i = 0; same && i < m.ndim; ++i) same = m.shape[i] == root.shape[i];
      if (!same) {
        throw CclError(who + " gave shape " + shape_str(m) + ", expected " + shape_str(root) +
                       " as on worker 0 (every worker must pass the same shape)");
      }
    }
  }
  return root;
}

void Communicator::wait_for(int peer, uint32_t epoch, Coll coll, double deadline) {
  RankCtl* c = ctl_at(base_, ctl_off_, peer);
  if (reached(c->arrive.load(std::memory_order_acquire), epoch)) return;
  // Short spin: with one core per rank the peer is usually a few hundred ns away.
  const double spin_end = now_s() + opts_.spin_us * 1e-6;
  for (;;) {
    for (int i = 0; i < 128; ++i) {
      if (reached(c->arrive.load(std::memory_order_acquire), epoch)) return;
      cpu_relax();
    }
    if (now_s() > spin_end) break;
  }
  // Then sleep on the peer's arrival word, in short slices so the deadline is kept.
  for (;;) {
    c->waiters.fetch_add(1, std::memory_order_seq_cst);
    const uint32_t v = c->arrive.load(std::memory_order_seq_cst);
    if (!reached(v, epoch)) futex_wait(&c->arrive, v, 2000000);
    c->waiters.fetch_sub(1, std::memory_order_seq_cst);
    if (reached(c->arrive.load(std::memory_order_acquire), epoch)) return;
    if (now_s() > deadline) {
      broken_ = true;
      std::string missing;
      for (int p = 0; p < world_; ++p) {
        if (!reached(ctl_at(base_, ctl_off_, p)->arrive.load(), epoch)) {
          missing += (missing.empty() ? "" : ", ") + std::to_string(p);
        }
      }
      throw CclError(std::string(coll_name(coll)) + ": worker " + std::to_string(rank_) + " timed out after " +
                     seconds(opts_.timeout_s) + " at barrier " + std::to_string(epoch) +
                     "; worker(s) [" + missing + "] did not arrive (did they call the same collective? did one die?)");
    }
  }
}

void Communicator::barrier(Coll coll) {
  const uint32_t e = ++epoch_;
  RankCtl* me = ctl_at(base_, ctl_off_, rank_);
  me->arrive.store(e, std::memory_order_seq_cst);
  if (me->waiters.load(std::memory_order_seq_cst) > 0) futex_wake(&me->arrive);
  if (world_ == 1) return;
  const double deadline = now_s() + opts_.timeout_s;
  for (int p = 1; p < world_; ++p) wait_for((rank_ + p) % world_, e, coll, deadline);
}

}  // namespace ccl
}  // namespace disco
