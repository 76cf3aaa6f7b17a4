"""Issue 15, case 5: nothing is pickled through the channel, and its decoder survives
any input. Values users pass (dicts, sets, numpy scalars, ...) travel as tagged codec
values; anything else is a ProtocolError when sent; random and mutated messages fed to
the decoder either decode or raise ProtocolError (never crash, hang or run code)."""
from __future__ import annotations

import os
import pickle

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import disco
from disco import _native
from disco.errors import ProtocolError
from disco.session.protocol import INLINE_ARRAY_BYTES, Spill, Transfer


@pytest.fixture(scope="module")
def chan():
    c = _native.Channel(1, ring_bytes=1 << 20)
    t = Transfer()
    t.codec = c
    c.set_codec(None, None, t.encode, t.decode, {}, INLINE_ARRAY_BYTES)
    yield c
    c.close()


VALUES = [
    {"a": 1, 2: [3.5, None], (1, 2): {"n": np.float32(2.5)}},
    {1, 2, 3}, frozenset({"x"}), 3 + 4j, 2 ** 100, -2 ** 70, np.int64(5), np.float16(1.5),
    ml_dtypes.bfloat16(2.0), np.dtype("float32"), slice(1, None, 2),
    np.arange(6, dtype=np.int32).reshape(2, 3), (True, b"raw", "text"),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_round_trip_without_pickle(chan, value):
    got = chan.decode(chan.encode(value))
    assert type(got) is type(value)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(got, value)
    else:
        assert got == value


class Custom:
    pass


def test_unknown_types_are_refused_when_sent(chan):
    with pytest.raises(ProtocolError, match=r"cannot send a value of type .*Custom; the channel carries None"):
        chan.encode({"x": Custom()})


def test_a_pickle_in_a_message_is_not_unpickled(chan, tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Evil(str(marker)))
    for tagged in (("pickle", evil), ("pickle_shm", os.getpid(), 0, len(evil))):
        data = bytes([11]) + chan.encode(tagged)   # tag 11: EXT (csrc/channel_bindings.cc)
        with pytest.raises(ProtocolError, match=r"unknown EXT kind"):
            chan.decode(data)
    assert not marker.exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_sessions_carry_these_values_and_spill_large_replies():
    with disco.ThreadedSession(2) as sess:
        sess.import_module("worker_funcs")
        echo = sess.get_global_func("test.echo")
        value = {"k": {1, 2}, "s": np.int32(7), "c": 1j}
        assert echo(value).fetch(1) == (value,)
        big = {"rows": ["x" * 1000] * 600}                # a reply larger than the reply area
        assert echo(big).fetch(0) == (big,)
        with pytest.raises(ProtocolError, match="cannot send a value of type"):
            echo(Custom())


def test_spill_is_codec_bytes(chan):
    t = Transfer()
    t.codec = chan
    tagged = t.encode(Spill({"a": [1, 2]}))
    assert tagged[0] == "spill" and t.decode(tagged) == {"a": [1, 2]}
    t.release()


# -- fuzz --------------------------------------------------------------------------------

def _decode_or_protocol_error(chan, data: bytes):
    try:
        chan.decode(data)
    except ProtocolError:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(chan, data):
    _decode_or_protocol_error(chan, data)


SEEDS = VALUES + [("raw", "<f4", (2,), b"\0" * 8), ("shm", 1, 3, 8, "<f4", (2,)),
                  ("scalar", "O", b"12345678"), ("dict", [1], [])]


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(range(len(SEEDS))), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                                     min_size=1, max_size=4), st.integers(0, 10 ** 6))
def test_fuzz_mutated_messages(chan, seed, flips, cut):
    value = SEEDS[seed]
    data = bytearray(chan.encode(value) if seed < len(VALUES) else bytes([11]) + chan.encode(value))
    for at, byte in flips:
        data[at % len(data)] = byte
    _decode_or_protocol_error(chan, bytes(data[:max(1, cut % (len(data) + 1))]))


def test_deep_nesting_is_an_error_not_a_crash(chan):
    data = bytes([7]) + (1).to_bytes(4, "little")   # a tuple of one item
    with pytest.raises(ProtocolError, match="nested deeper than 64"):
        chan.decode(data * 100_000 + bytes([0]))
    obj = np.dtype("O").str.encode()
    arr = bytes([10, len(obj)]) + obj + bytes([1]) + (1).to_bytes(8, "little") + (8).to_bytes(8, "little") + b"\1" * 8
    with pytest.raises(ProtocolError, match="not a plain number type"):
        chan.decode(arr)
