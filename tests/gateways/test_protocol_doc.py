"""docs/protocol.md lists every wire message with its fields in wire order; it must stay true."""

import re
import typing
from pathlib import Path

import msgspec

import engine.messages as m

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
# Every message a client may send, every reply, and what only the journal holds: derived from
# the unions, so a new message cannot be left out of the document.
WIRE = sorted({*typing.get_args(m.ClientMessage), *typing.get_args(m.Reply), *typing.get_args(m.Journaled),
               m.OrderView, m.BookLevel, m.AlertView, m.AlertHistoryEntry, m.RuleFinding, m.AllocationTarget},
              key=lambda cls: cls.__name__)


def test_every_wire_message_is_documented_with_its_fields_in_order():
    documented = dict(re.findall(r"^- \*\*(\w+)\*\* `\[\"\w+\", …\]`: (.*?)(?: \(not tagged.*)?$", DOC, re.M))
    for cls in WIRE:
        fields = [f.name for f in msgspec.inspect.type_info(cls).fields]
        assert cls.__name__ in documented, f"{cls.__name__} missing from docs/protocol.md"
        assert re.findall(r"`(\w+)`", documented[cls.__name__]) == fields, cls.__name__


def test_the_documented_example_decodes_as_written():
    raw = msgspec.msgpack.encode(["SubmitOrder", "FUND1", "my-id-1", "AAPL", 0, 100, 0, 19010])
    cmd = m.COMMAND_DECODER.decode(raw)
    assert (cmd.account, cmd.symbol, cmd.side, cmd.qty, cmd.price) == ("FUND1", "AAPL", 0, 100, 19010)
