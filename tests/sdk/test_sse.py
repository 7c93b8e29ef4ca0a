"""The pure SSE decoder: line endings, fields, comments, and any chunking of a byte stream."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from runrelay.sse import SSEComment, SSEDecoder, SSEFrame, SSEItem, SSERetry, decode


def test_frames_comments_and_retry_are_reported_in_order() -> None:
    stream = (
        b"retry: 2000\n\n"
        b": ping\n\n"
        b'id: 1\nevent: run.queued\ndata: {"a": 1}\n\n'
        b'event: stream.gap\ndata: {"from": 2, "to": 5}\n\n'
    )
    assert decode([stream]) == [
        SSERetry(2000),
        SSEComment("ping"),
        SSEFrame(event="run.queued", data='{"a": 1}', id="1"),
        SSEFrame(event="stream.gap", data='{"from": 2, "to": 5}', id=None),
    ]


def test_a_frame_without_id_does_not_inherit_the_previous_one() -> None:
    # Deliberately unlike a browser's lastEventId: the cursor must not move on a gap.
    items = decode([b"id: 7\ndata: x\n\ndata: y\n\n"])
    assert [i.id for i in items if isinstance(i, SSEFrame)] == ["7", None]


def test_multiline_data_bom_and_all_line_endings() -> None:
    items = decode(["\ufeffdata: a\r\ndata:b\rdata:  c\n\r\n".encode()])
    assert items == [SSEFrame(event="message", data="a\nb\n c")]


def test_blocks_without_data_and_unknown_fields_dispatch_nothing() -> None:
    assert decode([b"id: 3\n\nevent: x\n\nfoo: bar\n\nretry: soon\n\n"]) == []


def test_an_unfinished_frame_at_the_end_is_not_dispatched() -> None:
    assert decode([b"id: 1\ndata: {}\n"]) == []


def test_cr_at_a_chunk_end_followed_by_lf_is_one_line_end() -> None:
    assert decode([b"data: a\r", b"\n\r", b"\n"]) == [SSEFrame(event="message", data="a")]


def test_a_character_split_across_chunks_survives() -> None:
    raw = "data: é→\n\n".encode()
    assert decode([raw[:7], raw[7:9], raw[9:]]) == [SSEFrame(event="message", data="é→")]


# --- property: chunking never changes what is decoded ----------------------------------

json_values = st.dictionaries(
    st.text(max_size=5), st.none() | st.integers(-(2**53), 2**53) | st.text(max_size=10), max_size=3
)
frames = st.builds(
    SSEFrame,
    event=st.sampled_from(["run.queued", "output.message.delta", "custom.x", "stream.gap"]),
    data=json_values.map(lambda v: orjson.dumps({"data": v}).decode()),
    id=st.none() | st.integers(min_value=1, max_value=10**9).map(str),
)
# Comment text can be anything but a line end; a leading space would be eaten by the rule.
comment_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10
).filter(lambda t: not t.startswith(" "))
items_strategy = st.lists(
    st.one_of(
        frames,
        st.builds(SSEComment, comment_text),
        st.builds(SSERetry, st.integers(min_value=0, max_value=10**6)),
    ),
    max_size=10,
)


def encode(items: list[SSEItem], newline: str) -> bytes:
    out: list[str] = []
    for item in items:
        if isinstance(item, SSEFrame):
            if item.id is not None:
                out.append(f"id: {item.id}{newline}")
            out.append(f"event: {item.event}{newline}data: {item.data}{newline}{newline}")
        elif isinstance(item, SSEComment):
            out.append(f": {item.text}{newline}")
        else:
            out.append(f"retry: {item.ms}{newline}{newline}")
    return "".join(out).encode()


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


@given(
    items=items_strategy,
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_any_chunking_decodes_to_the_encoded_items(
    items: list[SSEItem], newline: str, cuts: list[int]
) -> None:
    raw = encode(items, newline)
    assert decode(split(raw, cuts)) == items
    assert decode([raw]) == items


@given(raw=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_never_crash_and_chunking_never_matters(
    raw: bytes, cuts: list[int]
) -> None:
    decoder = SSEDecoder()
    chunked = [item for chunk in split(raw, cuts) for item in decoder.feed(chunk)]
    assert chunked == decode([raw])
