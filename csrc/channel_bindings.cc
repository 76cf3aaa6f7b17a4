// disco._native.Channel: the command channel (channel.h) plus the compact binary codec
// of command payloads and replies. No pickle here: the codec knows None, bool, int
// (64-bit), float, str, bytes, tuple, list, DRef ids and small C-contiguous numpy
// arrays of plain dtypes; anything else goes through the `ext_encode` / `ext_decode`
// hooks given by Python (large arrays through shared-memory buffers, rare objects
// through pickle), tagged EXT on the wire.
//
// A message is [u8 op][7 pad][i64 a][i64 b][payload value]; a reply is one value.
//
// The hot commands in C++. A worker's loop (disco/session/worker.py) hands the channel
// its tables (`handle_hot_commands`); `next` then runs CALL (funcs[a](*args) stored as
// objects[b]), FREE (payload: ids) and SYNC (payload: ids to free, or None) itself,
// acknowledging a SYNC with an OK/None reply while `clean` says no failure waits to be
// reported, and returns to Python only for the other commands, a SYNC that must carry
// failures, a hot command whose payload did not decode or names a missing DRef
// (missing != kNextNothingMissing), and a CALL that raised (missing == kNextCallRaised,
// payload: the exception).
// A pipelined call then costs a worker no Python bytecode besides the function's own.
// The protocol's numbers are protocol.h's; bind_channel exports them to Python.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <sys/prctl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "channel.h"
#include "protocol.h"

namespace py = pybind11;
using disco::channel::Channel;
using disco::protocol::kNextCallRaised;
using disco::protocol::kNextDecodeFailed;
using disco::protocol::kNextNothingMissing;
using Op = disco::protocol::Op;
using Status = disco::protocol::Status;

namespace {

enum Tag : uint8_t { kNone, kFalse, kTrue, kInt, kFloat, kStr, kBytes, kTuple, kList, kDRef, kArray, kExt };
constexpr int kMaxDepth = 64;
constexpr int kOpCall = static_cast<int>(Op::CALL), kOpFree = static_cast<int>(Op::FREE),
              kOpSync = static_cast<int>(Op::SYNC);
constexpr uint32_t kStatusOk = static_cast<uint32_t>(Status::OK);

// The pending Python exception as an object with its __traceback__ set; clears it.
py::object take_exception() {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != nullptr) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return py::reinterpret_steal<py::object>(value);
}

using Clock = std::chrono::steady_clock;

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  template <class T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  const uint8_t* take(size_t n) {
    need(n);
    const uint8_t* q = p;
    p += n;
    return q;
  }
  void need(size_t n) {
    if (size_t(end - p) < n) throw disco::channel::ChannelError("truncated message in the channel codec");
  }
};

class PyChannel {
 public:
  explicit PyChannel(std::unique_ptr<Channel> ch) : ch_(std::move(ch)) {}
  Channel& ch() { return *ch_; }

  py::object dref_type, owner, ext_encode, ext_decode, objects, liveness;
  uint64_t inline_array_bytes = 64 << 10;
  py::object failed, funcs;  // worker: DRef id -> failure, slot -> function (handle_hot_commands)
  bool hot = false;          // worker: `next` runs CALL, FREE and SYNC itself
  bool clean = true;         // worker: no failure waits for a reply, a SYNC may be acknowledged here

  // -- codec --
  void Encode(py::handle h, std::string& out, int depth) {
    if (depth > kMaxDepth) throw py::value_error("disco channel: value nested deeper than 64 levels");
    PyObject* o = h.ptr();
    if (o == Py_None) return put<uint8_t>(out, kNone);
    if (PyBool_Check(o)) return put<uint8_t>(out, o == Py_True ? kTrue : kFalse);
    if (PyLong_CheckExact(o)) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
      if (!overflow) {
        put<uint8_t>(out, kInt);
        return put<int64_t>(out, v);
      }
    } else if (PyFloat_CheckExact(o)) {
      put<uint8_t>(out, kFloat);
      return put<double>(out, PyFloat_AS_DOUBLE(o));
    } else if (PyUnicode_CheckExact(o)) {
      Py_ssize_t n;
      const char* s = PyUnicode_AsUTF8AndSize(o, &n);
      if (s == nullptr) throw py::error_already_set();
      put<uint8_t>(out, kStr);
      put<uint32_t>(out, static_cast<uint32_t>(n));
      out.append(s, size_t(n));
      return;
    } else if (PyBytes_CheckExact(o)) {
      put<uint8_t>(out, kBytes);
      put<uint32_t>(out, static_cast<uint32_t>(PyBytes_GET_SIZE(o)));
      out.append(PyBytes_AS_STRING(o), size_t(PyBytes_GET_SIZE(o)));
      return;
    } else if (PyTuple_CheckExact(o) || PyList_CheckExact(o)) {
      const bool tup = PyTuple_CheckExact(o);
      const Py_ssize_t n = tup ? PyTuple_GET_SIZE(o) : PyList_GET_SIZE(o);
      put<uint8_t>(out, tup ? kTuple : kList);
      put<uint32_t>(out, static_cast<uint32_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) Encode(tup ? PyTuple_GET_ITEM(o, i) : PyList_GET_ITEM(o, i), out, depth + 1);
      return;
    } else if (dref_type && PyObject_TypeCheck(o, reinterpret_cast<PyTypeObject*>(dref_type.ptr()))) {
      if (py::object(h.attr("_tok")).ptr() != owner.ptr()) throw py::type_error("disco channel: DRef of another session");
      put<uint8_t>(out, kDRef);
      return put<int64_t>(out, h.attr("_id").cast<int64_t>());
    } else if (py::array::check_(h)) {
      auto arr = py::reinterpret_borrow<py::array>(h);
      const char kind = arr.dtype().kind();
      const bool plain = kind == 'b' || kind == 'i' || kind == 'u' || kind == 'f' || kind == 'c';
      if (plain && (arr.flags() & py::array::c_style) && uint64_t(arr.nbytes()) <= inline_array_bytes &&
          arr.ndim() < 256) {
        std::string dt = py::str(arr.dtype().attr("str"));
        put<uint8_t>(out, kArray);
        put<uint8_t>(out, static_cast<uint8_t>(dt.size()));
        out.append(dt);
        put<uint8_t>(out, static_cast<uint8_t>(arr.ndim()));
        for (py::ssize_t i = 0; i < arr.ndim(); ++i) put<int64_t>(out, arr.shape(i));
        put<uint64_t>(out, uint64_t(arr.nbytes()));
        out.append(static_cast<const char*>(arr.data()), size_t(arr.nbytes()));
        return;
      }
    }
    if (!ext_encode) throw py::type_error("disco channel: cannot encode a value of type " +
                                          std::string(Py_TYPE(o)->tp_name));
    put<uint8_t>(out, kExt);
    Encode(ext_encode(h), out, depth + 1);
  }

  // Decoding checks everything it reads (a damaged message raises ChannelError, a
  // DiscoError, and allocates nothing it cannot fill): nesting depth, counts against the
  // bytes left, UTF-8, and arrays of plain dtypes whose byte count is shape x itemsize.
  py::object Decode(Reader& r, int64_t& missing, int depth = 0) {
    if (depth > kMaxDepth) throw disco::channel::ChannelError("value nested deeper than 64 levels in the channel codec");
    const uint8_t tag = r.get<uint8_t>();
    switch (tag) {
      case kNone: return py::none();
      case kFalse: return py::bool_(false);
      case kTrue: return py::bool_(true);
      case kInt: return py::int_(r.get<int64_t>());
      case kFloat: return py::float_(r.get<double>());
      case kStr: {
        uint32_t n = r.get<uint32_t>();
        const char* s = reinterpret_cast<const char*>(r.take(n));
        PyObject* u = PyUnicode_DecodeUTF8(s, n, "strict");
        if (u == nullptr) {
          PyErr_Clear();
          throw disco::channel::ChannelError("a string in the channel codec is not valid UTF-8");
        }
        return py::reinterpret_steal<py::object>(u);
      }
      case kBytes: {
        uint32_t n = r.get<uint32_t>();
        return py::bytes(reinterpret_cast<const char*>(r.take(n)), n);
      }
      case kTuple: {
        uint32_t n = r.get<uint32_t>();
        r.need(n);  // every item takes at least its tag byte
        py::tuple t(n);
        for (uint32_t i = 0; i < n; ++i) t[i] = Decode(r, missing, depth + 1);
        return std::move(t);
      }
      case kList: {
        uint32_t n = r.get<uint32_t>();
        r.need(n);
        py::list l(n);
        for (uint32_t i = 0; i < n; ++i) l[i] = Decode(r, missing, depth + 1);
        return std::move(l);
      }
      case kDRef: {
        const int64_t id = r.get<int64_t>();
        if (objects) {
          py::int_ key(id);
          PyObject* v = PyDict_GetItem(objects.ptr(), key.ptr());  // borrowed
          if (v != nullptr) return py::reinterpret_borrow<py::object>(v);
        }
        if (missing < 0) missing = id;
        return py::none();
      }
      case kArray: {
        uint8_t n = r.get<uint8_t>();
        std::string dt(reinterpret_cast<const char*>(r.take(n)), n);
        uint8_t ndim = r.get<uint8_t>();
        std::vector<py::ssize_t> shape(ndim);
        for (auto& s : shape) s = r.get<int64_t>();
        uint64_t nbytes = r.get<uint64_t>();
        py::dtype dtype = ArrayDType(dt);
        uint64_t want = static_cast<uint64_t>(dtype.itemsize());
        for (py::ssize_t d : shape) {
          if (d < 0 || (d > 0 && want > (uint64_t(1) << 62) / uint64_t(d)))
            throw disco::channel::ChannelError("array of a negative or too large shape in the channel codec");
          want *= uint64_t(d);
        }
        if (want != nbytes) {
          throw disco::channel::ChannelError("array of " + std::to_string(nbytes) + " bytes in the channel codec, its "
                                             "shape and dtype take " + std::to_string(want));
        }
        const uint8_t* data = r.take(nbytes);
        py::array arr(dtype, shape);
        std::memcpy(arr.mutable_data(), data, nbytes);
        return std::move(arr);
      }
      case kExt: {
        py::object v = Decode(r, missing, depth + 1);
        if (!ext_decode) throw disco::channel::ChannelError("an EXT value in the channel codec, and no decoder for it");
        return ext_decode(v);
      }
      default:
        throw disco::channel::ChannelError("unknown tag " + std::to_string(tag) + " in the channel codec");
    }
  }

  // The numpy dtype of an array's dtype text, only plain ones (bool, ints, floats,
  // complex): anything else, an object dtype above all, is a ChannelError.
  static py::dtype ArrayDType(const std::string& raw) {
    std::string text;  // for messages: bytes outside printable ASCII as '?' (what() must be UTF-8)
    for (char c : raw) text += (c >= 32 && c < 127) ? c : '?';
    py::dtype dt;
    try {
      dt = py::dtype(raw);
    } catch (py::error_already_set&) {
      throw disco::channel::ChannelError("unknown array dtype '" + text + "' in the channel codec");
    }
    const char kind = dt.kind();
    if (!(kind == 'b' || kind == 'i' || kind == 'u' || kind == 'f' || kind == 'c') || dt.itemsize() <= 0)
      throw disco::channel::ChannelError("array dtype '" + text + "' in the channel codec is not a plain number type");
    return dt;
  }

 public:
  // The codec alone, for spilled replies and tests: a value's bytes, and back.
  py::bytes EncodeValue(py::handle value) {
    std::string out;
    Encode(value, out, 0);
    return py::bytes(out);
  }
  py::object DecodeValue(py::buffer data) {
    py::buffer_info info = data.request();
    const auto* p = static_cast<const uint8_t*>(info.ptr);
    Reader r{p, p + info.size * info.itemsize};
    int64_t missing = kNextNothingMissing;
    py::object v = Decode(r, missing);
    if (r.p != r.end) throw disco::channel::ChannelError(std::to_string(r.end - r.p) + " bytes left over after a value in the channel codec");
    return v;
  }

  // Between timed waits: let Python check that peers are alive (it raises if not).
  void CheckLiveness() {
    if (liveness) liveness();
  }

  // -- controller --
  uint64_t Post(int op, int64_t a, int64_t b, py::handle payload) {
    std::string& out = buf_;
    out.clear();
    put<uint8_t>(out, static_cast<uint8_t>(op));
    out.append(7, '\0');
    put<int64_t>(out, a);
    put<int64_t>(out, b);
    Encode(payload, out, 0);
    uint8_t* dst = ch_->Reserve(out.size(), 0.0);
    while (dst == nullptr) {
      {
        py::gil_scoped_release nogil;
        dst = ch_->Reserve(out.size(), 0.05);
      }
      if (dst == nullptr) CheckLiveness();
    }
    std::memcpy(dst, out.data(), out.size());
    return ch_->Publish();
  }

  void Wait(int w, uint64_t seq) {
    CheckWorker(w);
    for (;;) {
      bool ok;
      {
        py::gil_scoped_release nogil;
        ok = ch_->WaitReply(w, seq, 0.05);
      }
      if (ok) return;
      CheckLiveness();
    }
  }

  // Wait for every worker's reply to `seq`; true when each is OK with value None (a
  // SYNC with nothing to report), so the caller need not decode them.
  bool WaitAll(uint64_t seq) {
    bool plain = true;
    for (int w = 0; w < ch_->num_workers(); ++w) {
      Wait(w, seq);
      uint32_t status, len;
      const uint8_t* p = ch_->Reply(w, &status, &len);
      plain = plain && status == kStatusOk && len == 1 && p[0] == kNone;
    }
    return plain;
  }

  py::tuple Reply(int w) {
    CheckWorker(w);
    uint32_t status, len;
    const uint8_t* p = ch_->Reply(w, &status, &len);
    Reader r{p, p + len};
    int64_t missing = kNextNothingMissing;
    py::object v = Decode(r, missing);
    return py::make_tuple(status, v);
  }

  // -- worker --
  py::object Next(double timeout_s) {
    const auto t0 = Clock::now();
    for (;;) {
      const double left = timeout_s - std::chrono::duration<double>(Clock::now() - t0).count();
      bool ok;
      {
        py::gil_scoped_release nogil;
        ok = ch_->WaitCommand(std::max(left, 0.0));
      }
      if (!ok) return py::none();
      uint32_t len;
      uint64_t seq;
      const uint8_t* p = ch_->Peek(&len, &seq);
      if (p == nullptr) return py::none();  // woken by close
      Reader r{p, p + len};
      const int op = r.get<uint8_t>();
      r.take(7);
      const int64_t a = r.get<int64_t>();
      const int64_t b = r.get<int64_t>();
      int64_t missing = kNextNothingMissing;
      py::object payload;
      try {
        payload = Decode(r, missing);
      } catch (py::error_already_set& e) {
        payload = e.value();  // the worker reports it; the message is consumed regardless
        missing = kNextDecodeFailed;
      } catch (std::exception& e) {
        payload = py::reinterpret_steal<py::object>(PyObject_CallFunction(PyExc_RuntimeError, "s", e.what()));
        missing = kNextDecodeFailed;
      }
      ch_->Pop();
      if (hot && missing == kNextNothingMissing) {
        if (op == kOpCall) {
          py::object raised = Call(a, b, payload);
          if (raised) return py::make_tuple(op, seq, a, b, raised, kNextCallRaised);
          CheckSignals();
          continue;
        }
        if (op == kOpFree || (op == kOpSync && clean)) {
          Free(payload);
          if (op == kOpSync) {
            *ch_->ReplyArea() = kNone;
            ch_->PostReply(seq, kStatusOk, 1);
          }
          CheckSignals();
          continue;
        }
      }
      return py::make_tuple(op, seq, a, b, payload, missing);
    }
  }

  // Run Python's signal handlers between hot commands, as the interpreter would between
  // commands handled in Python (a KeyboardInterrupt then leaves `next`).
  static void CheckSignals() {
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }

  // objects[b] = funcs[a](*args); the exception instead if that raised (else a null object).
  py::object Call(int64_t slot, int64_t result_id, py::handle args) {
    if (!PyTuple_Check(args.ptr())) {
      PyErr_SetString(PyExc_TypeError, "CALL payload is not a tuple of arguments");
      return take_exception();
    }
    py::int_ key(slot);
    PyObject* f = PyDict_GetItem(funcs.ptr(), key.ptr());  // borrowed
    if (f == nullptr) {
      PyErr_SetString(PyExc_KeyError, ("no function in slot " + std::to_string(slot) +
                                       " on this worker (GET_FUNC did not register it)").c_str());
      return take_exception();
    }
    Py_INCREF(f);  // the call may replace funcs[slot]
    PyObject* result = PyObject_Call(f, args.ptr(), nullptr);
    Py_DECREF(f);
    if (result == nullptr) return take_exception();
    py::int_ rid(result_id);
    const int rc = PyDict_SetItem(objects.ptr(), rid.ptr(), result);
    Py_DECREF(result);
    if (rc != 0) return take_exception();
    return py::object();
  }

  // Drop the objects (and recorded failures) of the DRef ids in `ids` (a tuple, or None).
  void Free(py::handle ids) {
    if (!PyTuple_Check(ids.ptr())) return;
    for (py::handle id : py::reinterpret_borrow<py::tuple>(ids)) {
      for (PyObject* table : {objects.ptr(), failed.ptr()}) {
        const int has = PyDict_Contains(table, id.ptr());  // -1: an unhashable id (a malformed payload)
        if (has < 0 || (has == 1 && PyDict_DelItem(table, id.ptr()) != 0)) PyErr_Clear();
      }
    }
  }

  void SendReply(uint64_t seq, uint32_t status, py::handle value) {
    std::string& out = buf_;
    out.clear();
    Encode(value, out, 0);
    if (out.size() > ch_->reply_capacity()) {
      PyErr_SetString(PyExc_OverflowError, ("reply of " + std::to_string(out.size()) + " bytes exceeds the reply area of " +
                                            std::to_string(ch_->reply_capacity()) + " bytes").c_str());
      throw py::error_already_set();
    }
    std::memcpy(ch_->ReplyArea(), out.data(), out.size());
    ch_->PostReply(seq, status, static_cast<uint32_t>(out.size()));
  }

 private:
  void CheckWorker(int w) {
    if (w < 0 || w >= ch_->num_workers())
      throw py::index_error("worker " + std::to_string(w) + " out of range [0, " + std::to_string(ch_->num_workers()) + ")");
  }
  std::unique_ptr<Channel> ch_;
  std::string buf_;
};

}  // namespace

void bind_channel(py::module_& m) {
  // A DiscoError (disco/errors.py's ProtocolError), so callers catch one family.
  py::register_exception<disco::channel::ChannelError>(
      m, "ChannelError", py::module_::import("disco.errors").attr("ProtocolError"));

  // protocol.h's numbers, for disco/session/protocol.py: {name: number} of each list.
#define DISCO_PROTOCOL_ENTRY(name, number) d[#name] = number;
#define DISCO_PROTOCOL_TABLE(LIST) [] { py::dict d; LIST(DISCO_PROTOCOL_ENTRY) return d; }()
  m.attr("PROTOCOL_OPS") = DISCO_PROTOCOL_TABLE(DISCO_PROTOCOL_OPS);
  m.attr("PROTOCOL_STATUSES") = DISCO_PROTOCOL_TABLE(DISCO_PROTOCOL_STATUSES);
#undef DISCO_PROTOCOL_TABLE
#undef DISCO_PROTOCOL_ENTRY
  m.attr("NEXT_NOTHING_MISSING") = kNextNothingMissing;
  m.attr("NEXT_DECODE_FAILED") = kNextDecodeFailed;
  m.attr("NEXT_CALL_RAISED") = kNextCallRaised;

  py::class_<PyChannel>(m, "Channel", "Shared-memory command ring + reply slots (csrc/channel.h).")
      .def(py::init([](int num_workers, uint64_t ring_bytes, uint32_t reply_bytes, double spin_us) {
             disco::channel::Options o;
             o.num_workers = num_workers;
             o.ring_bytes = ring_bytes;
             o.reply_bytes = reply_bytes;
             o.spin_us = spin_us;
             return std::make_unique<PyChannel>(std::make_unique<Channel>(o));
           }),
           py::arg("num_workers"), py::arg("ring_bytes") = 16ull << 20, py::arg("reply_bytes") = 256u << 10,
           py::arg("spin_us") = 20.0)
      .def_static(
          "attach", [](int fd, int worker_id) { return std::make_unique<PyChannel>(std::make_unique<Channel>(fd, worker_id)); },
          py::arg("fd"), py::arg("worker_id"))
      .def_property_readonly("fd", [](PyChannel& c) { return c.ch().fd(); })
      .def_property_readonly("num_workers", [](PyChannel& c) { return c.ch().num_workers(); })
      .def_property_readonly("max_message", [](PyChannel& c) { return c.ch().max_message(); })
      .def_property_readonly("reply_capacity", [](PyChannel& c) { return c.ch().reply_capacity(); })
      .def_property_readonly("closed", [](PyChannel& c) { return c.ch().closed(); })
      .def_property_readonly("last_seq", [](PyChannel& c) { return c.ch().last_seq(); })
      .def(
          "set_codec",
          [](PyChannel& c, py::object dref_type, py::object owner, py::object ext_encode, py::object ext_decode,
             py::object objects, uint64_t inline_array_bytes) {
            c.dref_type = dref_type.is_none() ? py::object() : dref_type;
            c.owner = owner;
            c.ext_encode = ext_encode.is_none() ? py::object() : ext_encode;
            c.ext_decode = ext_decode.is_none() ? py::object() : ext_decode;
            c.objects = objects.is_none() ? py::object() : objects;
            c.inline_array_bytes = inline_array_bytes;
          },
          py::arg("dref_type"), py::arg("owner"), py::arg("ext_encode"), py::arg("ext_decode"), py::arg("objects"),
          py::arg("inline_array_bytes") = 64 << 10)
      .def(
          "set_liveness", [](PyChannel& c, py::object f) { c.liveness = f.is_none() ? py::object() : f; },
          "Called between timed waits (every 50 ms); raise from it to abort the wait.")
      .def("post", &PyChannel::Post, py::arg("op"), py::arg("a"), py::arg("b"), py::arg("payload"),
           "Encode and publish one command; returns its seq.")
      .def("wait", &PyChannel::Wait, py::arg("worker"), py::arg("seq"), "Block until `worker` replied to `seq`.")
      .def("wait_all", &PyChannel::WaitAll, py::arg("seq"),
           "Block until every worker replied to `seq`; True if every reply is OK with value None.")
      .def("reply", &PyChannel::Reply, py::arg("worker"), "(status, value) of `worker`'s last reply.")
      .def("attached", [](PyChannel& c, int w) { return c.ch().attached(w); })
      .def("consumed", [](PyChannel& c, int w) { return c.ch().consumed(w); })
      .def("close", [](PyChannel& c) { c.ch().Close(); })
      .def("next", &PyChannel::Next, py::arg("timeout_s"),
           "Worker: (op, seq, a, b, payload, missing) or None on timeout/close. missing: first unknown "
           "DRef id, else NEXT_NOTHING_MISSING if none, NEXT_DECODE_FAILED if decoding failed, "
           "NEXT_CALL_RAISED if a CALL run here raised (payload is then the exception).")
      .def(
          "handle_hot_commands",
          [](PyChannel& c, py::dict funcs, py::dict objects, py::dict failed) {
            c.funcs = funcs;
            c.objects = objects;
            c.failed = failed;
            c.hot = true;
          },
          py::arg("funcs"), py::arg("objects"), py::arg("failed"),
          "Worker: let `next` run CALL, FREE and SYNC itself on these tables (see the file comment).")
      .def_property(
          "clean", [](PyChannel& c) { return c.clean; }, [](PyChannel& c, bool v) { c.clean = v; },
          "Worker: no failure waits for a reply, so `next` may acknowledge a SYNC itself.")
      .def("encode", &PyChannel::EncodeValue, py::arg("value"), "The codec's bytes of `value`.")
      .def("decode", &PyChannel::DecodeValue, py::arg("data"),
           "The value of the codec's bytes `data` (ChannelError if they are not one value).")
      .def("send_reply", &PyChannel::SendReply, py::arg("seq"), py::arg("status"), py::arg("value"));

  m.def("create_buffer", &disco::channel::CreateAnonymousSegment, py::arg("nbytes"),
        "fd of a new, already unlinked shared-memory file of nbytes (mode 0600).");
  m.def(
      "set_parent_death_signal", [](int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0; }, py::arg("sig"),
      "prctl(PR_SET_PDEATHSIG, sig): the kernel sends `sig` to this process when its parent dies.");
}
