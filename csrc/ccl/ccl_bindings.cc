// Python bindings of the shared-memory collectives: disco._native.ShmCommunicator.
// disco/ccl/shm.py is the only caller; it maps numpy dtypes to DType codes, allocates
// outputs, and makes the arrays C-contiguous. Every wait runs with the GIL released,
// so that threads of one process can act as ranks.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "ccl/allgather.h"
#include "ccl/allreduce.h"
#include "ccl/broadcast.h"
#include "ccl/communicator.h"
#include "ccl/gather.h"
#include "ccl/p2p.h"
#include "ccl/reduce_scatter.h"
#include "ccl/scatter.h"

namespace py = pybind11;
using namespace disco::ccl;

namespace {

// This rank cannot take part in `coll` with its arguments: post why, so that every
// rank raises it (Communicator::fail_arguments). Always throws.
[[noreturn]] void fail_arguments(Communicator& c, Coll coll, const std::string& problem) {
  py::gil_scoped_release nogil;
  c.fail_arguments(coll, problem);
}

// The Meta of an array argument of `coll` (or of "no array" when x is None).
Meta meta_of(Communicator& c, Coll coll, const py::object& x, int dtype, const std::string& dtype_name, int op,
             int axis) {
  Meta m{};
  m.dtype = dtype;
  m.op = op;
  m.axis = axis;
  m.ndim = -1;
  std::snprintf(m.dtype_name, sizeof(m.dtype_name), "%s", dtype_name.c_str());
  if (x.is_none()) return m;
  py::array a = py::reinterpret_borrow<py::array>(x);
  if (a.ndim() > kMaxDims) {
    fail_arguments(c, coll, "arrays of at most " + std::to_string(kMaxDims) + " dims are supported, given one of " +
                                std::to_string(a.ndim()) + " dims");
  }
  m.ndim = static_cast<int32_t>(a.ndim());
  for (int i = 0; i < m.ndim; ++i) m.shape[i] = a.shape(i);
  return m;
}

const void* cdata(const py::object& x) { return x.is_none() ? nullptr : py::reinterpret_borrow<py::array>(x).data(); }
void* mdata(const py::object& x) { return x.is_none() ? nullptr : py::reinterpret_borrow<py::array>(x).mutable_data(); }

py::tuple shape_tuple(const Meta& m) {
  py::tuple t(m.ndim);
  for (int i = 0; i < m.ndim; ++i) t[i] = m.shape[i];
  return t;
}

// What keeps an arena array's block allocated: freed when numpy drops the array, and the
// communicator (its mapping) alive until then, even past the communicator's close().
struct ArenaBlock {
  std::shared_ptr<Communicator> comm;
  int64_t off;
};

}  // namespace

void bind_ccl(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CclError& e) {
      py::object cls = py::module_::import("disco.errors").attr("CollectiveError");
      PyErr_SetString(cls.ptr(), e.what());
    }
  });

  py::class_<Communicator, std::shared_ptr<Communicator>>(m, "ShmCommunicator",
      "A shared-memory communicator of one rank; see csrc/ccl/communicator.h.")
      .def(py::init([](const std::string& group, int rank, int world, size_t chunk_bytes, size_t small_bytes,
                       double timeout_s, double spin_us, size_t stream_bytes, size_t arena_bytes,
                       size_t p2p_bytes, const std::string& secret) {
             Options o;
             o.secret = secret;
             o.chunk_bytes = chunk_bytes;
             o.small_bytes = small_bytes;
             o.timeout_s = timeout_s;
             o.spin_us = spin_us;
             o.stream_bytes = stream_bytes;
             o.arena_bytes = arena_bytes;
             o.p2p_bytes = p2p_bytes;
             py::gil_scoped_release nogil;
             return std::make_shared<Communicator>(group, rank, world, o);
           }),
           py::arg("group"), py::arg("rank"), py::arg("world"), py::arg("chunk_bytes") = Options().chunk_bytes,
           py::arg("small_bytes") = Options().small_bytes, py::arg("timeout_s") = Options().timeout_s,
           py::arg("spin_us") = Options().spin_us, py::arg("stream_bytes") = Options().stream_bytes,
           py::arg("arena_bytes") = Options().arena_bytes, py::arg("p2p_bytes") = Options().p2p_bytes,
           py::arg("secret") = std::string())
      .def("arena_empty", [](std::shared_ptr<Communicator> c, std::vector<py::ssize_t> shape, py::dtype dt) -> py::object {
        size_t nbytes = static_cast<size_t>(dt.itemsize());
        for (py::ssize_t d : shape) {  // a negative or overflowing size: numpy's own error
          if (d < 0 || __builtin_mul_overflow(nbytes, static_cast<size_t>(d), &nbytes)) return py::none();
        }
        const int64_t off = c->arena_alloc(nbytes);
        if (off < 0) return py::none();
        py::capsule owner(new ArenaBlock{c, off}, [](void* p) {
          auto* b = static_cast<ArenaBlock*>(p);
          b->comm->arena_free(b->off);
          delete b;
        });
        return py::array(dt, shape, c->arena(c->rank()) + off, owner);
      }, py::arg("shape"), py::arg("dtype"),
      "An uninitialised C-contiguous array in this rank's arena, or None if it has no room.")
      .def("allreduce_paths", [](Communicator& c) {
        py::dict d;
        d["one_barrier"] = c.allreduce_paths.one_barrier;
        d["staged"] = c.allreduce_paths.staged;
        d["outputs_in_arenas"] = c.allreduce_paths.outputs_in_arenas;
        d["in_arenas"] = c.allreduce_paths.in_arenas;
        return d;
      }, "How many of this rank's all-reduces took each path (communicator.h).")
      .def("in_arena", [](Communicator& c, py::array a) { return c.arena_offset(a.data(), size_t(a.nbytes())) >= 0; },
           "Whether the array's bytes lie in this rank's arena.")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("world", &Communicator::world)
      .def("allreduce", [](Communicator& c, py::object x, py::object out, int dtype, std::string dname, int op) {
        Meta mt = meta_of(c, Coll::kAllreduce, x, dtype, dname, op, 0);
        const void* in = cdata(x);
        void* o = mdata(out);
        py::gil_scoped_release nogil;
        allreduce(c, mt, in, o);
      })
      .def("allgather", [](Communicator& c, py::object x, py::object out, int dtype, std::string dname, int axis) {
        Meta mt = meta_of(c, Coll::kAllgather, x, dtype, dname, 0, axis);
        const void* in = cdata(x);
        void* o = mdata(out);
        py::gil_scoped_release nogil;
        allgather(c, mt, in, o);
      })
      .def("reduce_scatter", [](Communicator& c, py::object x, py::object out, int dtype, std::string dname, int op, int axis) {
        Meta mt = meta_of(c, Coll::kReduceScatter, x, dtype, dname, op, axis);
        const void* in = cdata(x);
        void* o = mdata(out);
        py::gil_scoped_release nogil;
        reduce_scatter(c, mt, in, o);
      })
      .def("gather_to_worker0", [](Communicator& c, py::object x, py::object out, int dtype, std::string dname, int axis) {
        Meta mt = meta_of(c, Coll::kGather, x, dtype, dname, 0, axis);
        const void* in = cdata(x);
        void* o = mdata(out);
        py::gil_scoped_release nogil;
        gather_to_worker0(c, mt, in, o);
      })
      .def("broadcast_from_worker0", [](Communicator& c, py::object x, int dtype, std::string dname, py::function alloc) {
        // alloc(shape, dtype_code) makes the output once worker 0's shape is known.
        Meta mt = meta_of(c, Coll::kBroadcast, x, dtype, dname, 0, 0);
        const void* in = cdata(x);
        Meta root;
        {
          py::gil_scoped_release nogil;
          root = broadcast_begin(c, mt, in);
        }
        py::object out = alloc(shape_tuple(root), root.dtype);
        void* o = mdata(out);
        {
          py::gil_scoped_release nogil;
          broadcast_finish(c, root, in, o);
        }
        return out;
      })
      .def("scatter_from_worker0", [](Communicator& c, py::object x, int dtype, std::string dname, int axis, py::function alloc) {
        Meta mt = meta_of(c, Coll::kScatter, x, dtype, dname, 0, axis);
        const void* in = cdata(x);
        Meta root;
        {
          py::gil_scoped_release nogil;
          root = scatter_begin(c, mt, in);
        }
        Meta part = root;
        part.shape[norm_axis(root)] /= c.world();
        py::object out = alloc(shape_tuple(part), root.dtype);
        void* o = mdata(out);
        {
          py::gil_scoped_release nogil;
          scatter_finish(c, root, in, o);
        }
        return out;
      })
      .def("send", [](Communicator& c, py::array x, int dst, const std::string& dtype_name) {
        // x: C-contiguous (disco/ccl/shm.py makes it so); dtype_name: how the receiver names it.
        Meta m = meta_of(c, Coll::kBarrier, x, -1, dtype_name, 0, 0);
        const void* data = x.data();
        const size_t nbytes = static_cast<size_t>(x.nbytes());
        py::gil_scoped_release nogil;
        p2p_send(c, m, nbytes, dst, data);
      }, py::arg("x"), py::arg("dst"), py::arg("dtype_name"),
      "Send the C-contiguous array x to rank dst (p2p.h); returns once x may be reused.")
      .def("recv", [](Communicator& c, py::array out, int src, const std::string& dtype_name) {
        Meta m = meta_of(c, Coll::kBarrier, out, -1, dtype_name, 0, 0);
        void* data = out.mutable_data();
        const size_t nbytes = static_cast<size_t>(out.nbytes());
        py::gil_scoped_release nogil;
        p2p_recv(c, m, nbytes, src, data);
      }, py::arg("out"), py::arg("src"), py::arg("dtype_name"),
      "Receive the next message from rank src into the C-contiguous array out, which must match "
      "its shape and dtype name (p2p.h).")
      .def("send_invalid", [](Communicator& c, int dst, const std::string& problem) {
        py::gil_scoped_release nogil;
        p2p_send_invalid(c, dst, problem);
      }, py::arg("dst"), py::arg("problem"),
      "This rank cannot send to dst (`problem` says why): the receiver raises it too; always throws.")
      .def("p2p_unreceived", [](Communicator& c, int dst) { return p2p_unreceived(c, dst); }, py::arg("dst"),
           "Messages this rank sent to dst that dst has not received yet.")
      .def("fail_arguments", [](Communicator& c, const std::string& coll, const std::string& problem) {
        fail_arguments(c, coll_from_name(coll), problem);
      }, py::arg("coll"), py::arg("problem"),
      "This worker cannot run ccl.<coll> with its arguments (`problem` says why): raise that as a "
      "CollectiveError on every worker of the group, which stays usable.")
      .def("barrier", [](Communicator& c) {
        Meta mt{};
        mt.coll = static_cast<int32_t>(Coll::kBarrier);
        mt.ndim = -1;
        py::gil_scoped_release nogil;
        c.ensure_usable(Coll::kBarrier);
        c.post(mt);
        c.barrier(Coll::kBarrier);
        c.check(mt, 0);
      });
}
