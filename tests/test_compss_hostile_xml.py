"""mesh.faces.compss.answers: malformed and hostile XML (DTDs, entities, BOMs, oversized and non-bytes
bodies) is refused with 400 before anything is parsed from it.

Fixtures and builders: ``tests/compss_helpers.py``.
"""

from __future__ import annotations

import pytest

from mesh.faces.compss.answers import (
    MAX_XML_BYTES,
    parse_lost_node,
    parse_resources,
    parse_start_application,
)
from tests.compss_helpers import (
    ADD_RESOURCES_SELF,
    CALL_PYTHON_ADD,
    LOST_NODE,
    element,
    param,
    refused,
    start,
)

# ---------------------------------------------------------------------------- malformed and hostile XML


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    b"",
    b"   \n",
    CALL_PYTHON_ADD[:-5],  # truncated
    CALL_PYTHON_ADD.replace(b"</methodName>", b"</methodname>"),  # mismatched tag
    b"<startApplication><lang>PYTHON</lang>",
    b'{"function": "operator:add", "args": [2, 3]}',  # JSON is not XML
    b"<startApplication>&undefined;</startApplication>",
    b"\xff\xfe<\x00a\x00/\x00>\x00",  # UTF-16: refused, the scripts send UTF-8
    b"<startApplication>\xe9</startApplication>",  # Latin-1 byte, not UTF-8
    b"<lostNode><workerName>x</workerName></lostNode>",  # another document
])
def test_malformed_start_application_is_400(body):
    refused(parse_start_application, body, 400)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<startApplication><lang>PYTHON</lang><className>&lol3;</className></startApplication>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE lostNode [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<lostNode><workerName>&xxe;</workerName></lostNode>"""


@pytest.mark.timeout(10)
@pytest.mark.parametrize("parse,body", [
    (parse_start_application, BILLION_LAUGHS),
    (parse_lost_node, EXTERNAL_ENTITY),
    (parse_resources, ADD_RESOURCES_SELF.replace(b"<newResource>", b'<!DOCTYPE newResource SYSTEM "http://x/d">\n<newResource>')),
    (parse_lost_node, b'<!doctype lostNode><lostNode><workerName>a</workerName></lostNode>'),
    (parse_lost_node, b'<lostNode><!ENTITY x "y"><workerName>a</workerName></lostNode>'),
    (parse_start_application, b"\xef\xbb\xbf" + BILLION_LAUGHS),  # behind a UTF-8 BOM
])
def test_dtds_and_entities_are_refused(parse, body):
    message = refused(parse, body, 400)
    assert "DOCTYPE" in message or "ENTITY" in message


@pytest.mark.timeout(10)
def test_comments_and_cdata_are_fine():
    body = LOST_NODE.replace(b"<lostNode>", b"<!-- a comment --><lostNode>").replace(
        b"127.0.0.2", b"<![CDATA[127.0.0.2]]>")
    assert parse_lost_node(body) == "127.0.0.2"


@pytest.mark.timeout(10)
def test_a_utf8_bom_is_tolerated():
    assert parse_start_application(b"\xef\xbb\xbf" + CALL_PYTHON_ADD).args == ("2", "3")


@pytest.mark.timeout(10)
def test_oversized_bodies_are_refused_before_parsing():
    huge = start(param("STRING_T", element("x" * MAX_XML_BYTES)))
    assert "bytes" in refused(parse_start_application, huge, 400)
    refused(parse_resources, b" " * (MAX_XML_BYTES + 1), 400)


@pytest.mark.timeout(10)
def test_non_bytes_body_is_400():
    refused(parse_lost_node, "<lostNode><workerName>a</workerName></lostNode>", 400)
