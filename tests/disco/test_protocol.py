"""The protocol's numbers are csrc/protocol.h's, read from the extension module; what
Python states about them by hand must agree."""
from __future__ import annotations

import re

from disco.session import protocol
from disco.session.protocol import Op, Status


def test_docstring_table_names_every_command_in_order():
    rows = re.findall(r"^    ([A-Z_]+)\s{2,}", protocol.__doc__, re.M)
    assert rows == [op.name for op in Op]


def test_statuses_and_next_markers():
    assert [s.name for s in Status] == ["OK", "ERROR", "NOT_FOUND"]   # what base.py handles
    markers = [protocol.NEXT_NOTHING_MISSING, protocol.NEXT_DECODE_FAILED, protocol.NEXT_CALL_RAISED]
    assert len(set(markers)) == 3 and all(m < 0 for m in markers)   # DRef ids are >= 0
