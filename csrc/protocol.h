// The numbers of the wire protocol between a Disco controller and its workers, defined
// once. The worker runs CALL, FREE and SYNC in C++ (channel_bindings.cc); everything
// else is Python, which takes these numbers from the extension module:
// channel_bindings.cc exports the tables below as disco._native.PROTOCOL_OPS /
// PROTOCOL_STATUSES (name -> number) and the `next` markers as NEXT_*, and
// disco/session/protocol.py builds its Op and Status enums from them. What each
// command carries and who replies: disco/session/protocol.py.
#pragma once

#include <cstdint>

namespace disco {
namespace protocol {

// X(name, number) for each command: the byte `op` of a message in the ring.
#define DISCO_PROTOCOL_OPS(X) \
  X(CALL, 1)                  \
  X(GET_FUNC, 2)              \
  X(FREE, 3)                  \
  X(FETCH, 4)                 \
  X(GATHER, 5)                \
  X(SYNC, 6)                  \
  X(BROADCAST, 7)             \
  X(SCATTER, 8)               \
  X(IMPORT, 9)                \
  X(SHUTDOWN, 10)

// X(name, number) for each reply status. ERROR's value: (summary, remote traceback,
// ...) as disco/session/worker.py writes it; NOT_FOUND (GET_FUNC): (message, "").
#define DISCO_PROTOCOL_STATUSES(X) \
  X(OK, 0)                         \
  X(ERROR, 1)                      \
  X(NOT_FOUND, 2)

enum class Op : uint8_t {
#define DISCO_PROTOCOL_ENUMERATOR(name, number) name = number,
  DISCO_PROTOCOL_OPS(DISCO_PROTOCOL_ENUMERATOR)
};

enum class Status : uint32_t {
  DISCO_PROTOCOL_STATUSES(DISCO_PROTOCOL_ENUMERATOR)
#undef DISCO_PROTOCOL_ENUMERATOR
};

// What a worker's `next` returns as `missing` besides the first unknown DRef id (>= 0).
constexpr int64_t kNextNothingMissing = -1;  // the payload decoded and every DRef is there
constexpr int64_t kNextDecodeFailed = -2;    // the payload did not decode; payload: the error
constexpr int64_t kNextCallRaised = -3;      // a CALL run in C++ raised; payload: the exception

}  // namespace protocol
}  // namespace disco
