"""The COMPSs agent REST requests: parsing the XML bodies the agent scripts send (no I/O here).

The formats, where they come from and what the real agent answers: :mod:`mesh.faces.compss.answers`,
which re-exports the parsers below. The records they return: :mod:`mesh.faces.compss.requests`.

The PUT bodies are ``Content-Type: application/xml`` (the scripts send it). Every parser
here raises :class:`CompssRequestError` with the HTTP status to answer: 400 for a body
that is not the expected XML (malformed, a DTD or entity declaration, over
:data:`MAX_XML_BYTES`, not UTF-8, a missing or bad field, base64 that does not decode) and
406 for a ``lang`` other than PYTHON.

Safety: bodies are decoded as UTF-8 (what the scripts declare) and refused if they hold
any markup declaration (``<!DOCTYPE``, ``<!ENTITY``, ``<!ELEMENT``...), so the standard
library's expat never sees a DTD: no entity expansion, no external entities. Only then is
the text given to ``xml.etree.ElementTree``. defusedxml is therefore not needed.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

from mesh.faces.compss.requests import (
    UNASSIGNED,
    CompssRequestError,
    Orchestrator,
    Processor,
    ResourcesRequest,
    StartApplication,
)

MAX_XML_BYTES = 4 * 1024 * 1024  # larger bodies are refused before parsing
MAX_PARAMS = 4096  # parameters (and array elements) in one startApplication
MAX_NAME = 4096  # longest module, function, node name...

SUPPORTED_LANG = "PYTHON"
UNSUPPORTED_LANG_MSG = "Unsupported language."  # the real agent's 406 body

_B64_SPACE = re.compile(rb"[ \t\r\n]+")
_MARKUP_DECL = re.compile(r"<!(?!--|\[CDATA\[)", re.IGNORECASE)
_JAVA_INT_RANGES = {
    "BYTE_T": (-(2**7), 2**7 - 1),
    "SHORT_T": (-(2**15), 2**15 - 1),
    "INT_T": (-(2**31), 2**31 - 1),
    "LONG_T": (-(2**63), 2**63 - 1),
    "LONGLONG_T": (-(2**63), 2**63 - 1),
}
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
# Parameter types COMPSs defines that mean nothing to a mesh function call.
_UNSUPPORTED_TYPES = {
    "FILE_T", "DIRECTORY_T", "PSCO_T", "EXTERNAL_PSCO_T", "BINDING_OBJECT_T", "COLLECTION_T",
    "DICT_COLLECTION_T", "STREAM_T", "EXTERNAL_STREAM_T", "ENUM_T", "VOID_T", "ANY_T",
    "WCHAR_T", "WSTRING_T", "ARRAY_CHAR_T", "ARRAY_BYTE_T", "ARRAY_SHORT_T", "ARRAY_INT_T",
    "ARRAY_LONG_T", "ARRAY_FLOAT_T", "ARRAY_DOUBLE_T",
}
_IN_MODES = {None, "IN", "READ"}  # <direction> (older COMPSs) / <accessMode> (newer)


def parse_start_application(body: bytes) -> StartApplication:
    """Parse a startApplication body; raise :class:`CompssRequestError` (400, or 406 for a
    lang other than PYTHON, which the real agent answers 406 too; a missing ``<lang>``
    means JAVA there, so 406 here)."""
    root = _parse(body, "startApplication")
    lang = _text(root, "lang")
    if lang is None or lang.strip().upper() != SUPPORTED_LANG:
        raise CompssRequestError(406, UNSUPPORTED_LANG_MSG + " mesh runs PYTHON only"
                                 + ("" if lang is None else f", not {lang.strip()[:100]!r}"))
    for unsupported in ("target", "prolog", "epilog"):
        if root.find(unsupported) is not None:
            raise CompssRequestError(400, f"<{unsupported}> is not supported by mesh")
    module = _name(root, "className", dotted=True)
    function = _name(root, "methodName", dotted=False)
    args, types = _parameters(root)
    action, forward_to = None, ()
    action_el = _one(root, "action")
    if action_el is not None:
        action = _text(action_el, "actionName", required=True).strip()
        forward_el = _one(action_el, "forwardTo")
        if forward_el is not None:
            forward_to = tuple((el.text or "").strip() for el in forward_el.findall("agent"))
            if len(forward_to) > MAX_PARAMS or not all(forward_to):
                raise CompssRequestError(400, "<forwardTo> must list non-empty <agent> URLs")
    orchestrator = None
    orch_el = _one(root, "orchestrator")
    if orch_el is not None:
        method = _text(orch_el, "method")
        method = None if method is None else method.strip().upper()
        if method not in (None, "GET", "POST", "PUT", "DELETE"):
            raise CompssRequestError(400, f"<orchestrator><method> {method[:20]!r} is not an HTTP method")
        orchestrator = Orchestrator(_stripped(orch_el, "host"), method, _stripped(orch_el, "operation"))
    return StartApplication(
        lang=SUPPORTED_LANG,
        module=module,
        function=function,
        args=args,
        param_types=types,
        cei_class=_stripped(root, "ceiClass") or None,
        has_result=_boolean(_text(root, "hasResult"), "<hasResult>", default=False),
        service_instance_id=_stripped(root, "serviceInstanceId") or None,
        action=action,
        forward_to=forward_to,
        orchestrator=orchestrator,
    )


def parse_resources(body: bytes) -> ResourcesRequest:
    """Parse an addResources (``<newResource>``) or removeResources (``<reduceNode>``) body."""
    root = _parse(body, ("newResource", "reduceNode"))
    if root.tag == "reduceNode":
        name = _node_name(root, "workerName")
        description = _one(root, "resources")
        if description is None:
            raise CompssRequestError(400, "<reduceNode> needs <resources>")
        return _described("reduce", name, description)
    resources = [el for el in root if el.tag in ("externalResource", "nioResource")]
    if len(resources) != 1:
        raise CompssRequestError(400, "<newResource> needs exactly one <externalResource> or <nioResource>")
    resource = resources[0]
    name = _node_name(resource, "name")
    description = _one(resource, "description")
    if description is None:
        raise CompssRequestError(400, f"<{resource.tag}> needs <description>")
    adaptor = _stripped(resource, "adaptor") or None
    if adaptor is None and resource.tag == "nioResource":
        adaptor = "es.bsc.compss.nio.master.NIOAdaptor"  # what NIOAdaptorResource sets
    properties: list[tuple[str, str]] = []
    conf = _one(resource, "resourceConf")
    if conf is not None:
        for child in conf:
            if child.tag == "Property":
                key = _text(child, "Name", required=True).strip()
                properties.append((key, (_text(child, "Value") or "").strip()))
            else:
                properties.append((child.tag, (child.text or "").strip()))
        if len(properties) > MAX_PARAMS:
            raise CompssRequestError(400, "too many adaptor properties")
    return replace(_described("add", name, description), adaptor=adaptor,
                   resource_element=resource.tag, properties=tuple(properties))


def parse_lost_node(body: bytes) -> str:
    """The ``<workerName>`` of a lostNode body: the node to drop at once."""
    return _node_name(_parse(body, "lostNode"), "workerName")


# --------------------------------------------------------------------- XML helpers


def _parse(body: bytes, roots) -> ET.Element:
    """The root element of ``body`` if it is safe, well-formed and named one of ``roots``."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise CompssRequestError(400, "the body must be bytes")
    if len(body) > MAX_XML_BYTES:
        raise CompssRequestError(400, f"body over {MAX_XML_BYTES} bytes")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CompssRequestError(400, f"body is not UTF-8 XML: {exc}") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise CompssRequestError(400, "an XML body is required")
    if _MARKUP_DECL.search(text):
        raise CompssRequestError(400, "DTDs and entity declarations (<!DOCTYPE, <!ENTITY...) are refused")
    try:
        # A str goes to expat as UTF-8 whatever the XML declaration says.
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise CompssRequestError(400, f"malformed XML: {exc}") from None
    roots = (roots,) if isinstance(roots, str) else roots
    if root.tag not in roots:
        wanted = " or ".join(f"<{r}>" for r in roots)
        raise CompssRequestError(400, f"expected a {wanted} document, not <{str(root.tag)[:100]}>")
    return root


def _one(parent: ET.Element, tag: str) -> ET.Element | None:
    found = parent.findall(tag)
    if len(found) > 1:
        raise CompssRequestError(400, f"more than one <{tag}> in <{parent.tag}>")
    return found[0] if found else None


def _text(parent: ET.Element, tag: str, required: bool = False) -> str | None:
    """The text of the child ``tag`` ('' if empty), None if absent (400 if required)."""
    el = _one(parent, tag)
    if el is None:
        if required:
            raise CompssRequestError(400, f"<{parent.tag}> needs <{tag}>")
        return None
    if len(el):
        raise CompssRequestError(400, f"<{tag}> must hold text, not elements")
    text = el.text or ""
    if len(text) > MAX_NAME:
        raise CompssRequestError(400, f"<{tag}> is longer than {MAX_NAME} characters")
    return text


def _stripped(parent: ET.Element, tag: str) -> str | None:
    text = _text(parent, tag)
    return None if text is None else text.strip()


def _name(parent: ET.Element, tag: str, dotted: bool) -> str:
    value = (_text(parent, tag) or "").strip()
    if not value:
        raise CompssRequestError(400, f"<{parent.tag}> needs a non-empty <{tag}>")
    parts = value.split(".") if dotted else [value]
    if not all(part.isidentifier() for part in parts):
        what = "a Python module name (dotted identifiers)" if dotted else "a Python function name"
        raise CompssRequestError(400, f"<{tag}> {value[:100]!r} is not {what}")
    return value


def _node_name(parent: ET.Element, tag: str) -> str:
    value = (_text(parent, tag) or "").strip()
    if not value:
        raise CompssRequestError(400, f"<{parent.tag}> needs a non-empty <{tag}>")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise CompssRequestError(400, f"<{tag}> {value[:100]!r} is not a node name")
    return value


def _parameters(root: ET.Element) -> tuple[tuple, tuple[str, ...]]:
    wrapper = _one(root, "parameters")
    if wrapper is None:
        return (), ()
    params = wrapper.findall("params")
    if len(params) > MAX_PARAMS:
        raise CompssRequestError(400, f"more than {MAX_PARAMS} parameters")
    args, types = [], []
    for index, param in enumerate(params):
        where = f"parameter {index}"
        kind = (_text(param, "type", required=True) or "").strip()
        for mode_tag in ("direction", "accessMode"):
            mode = _stripped(param, mode_tag)
            if mode not in _IN_MODES:
                raise CompssRequestError(400, f"{where}: <{mode_tag}>{mode[:20]}</{mode_tag}> is not supported "
                                              "(mesh passes inputs only)")
        element, array = _one(param, "element"), _one(param, "array")
        if (element is None) == (array is None):
            raise CompssRequestError(400, f"{where}: needs exactly one <element> or <array>")
        if array is not None:
            if kind != "OBJECT_T":
                raise CompssRequestError(400, f"{where}: an <array> must have type OBJECT_T, not {kind[:40]}")
            args.append(_string_array(array, where))
        else:
            args.append(_element_value(element, kind, where))
        types.append(kind)
    return tuple(args), tuple(types)


def _value_text(element: ET.Element, where: str) -> str:
    value = _one(element, "value")
    if value is None:
        raise CompssRequestError(400, f"{where}: <element> needs <value>")
    if len(value):
        raise CompssRequestError(400, f"{where}: <value> must hold text, not elements")
    return value.text or ""


def _element_value(element: ET.Element, kind: str, where: str):
    if kind == "NULL_T":
        return None
    if kind == "OBJECT_T":
        raise CompssRequestError(400, f"{where}: OBJECT_T values (serialized Java objects) are not supported; "
                                      "send STRING_64_T")
    if kind in _UNSUPPORTED_TYPES:
        raise CompssRequestError(400, f"{where}: parameter type {kind} is not supported by mesh")
    text = _value_text(element, where)
    if kind == "STRING_64_T":
        return _string64(text, where)
    if kind == "STRING_T":
        return text
    if kind == "CHAR_T":
        if len(text) != 1:
            raise CompssRequestError(400, f"{where}: CHAR_T needs exactly one character")
        return text
    if kind == "BOOLEAN_T":
        return _boolean(text, where, default=None)
    if kind in _JAVA_INT_RANGES:
        low, high = _JAVA_INT_RANGES[kind]
        try:
            number = int(text.strip(), 10)
        except ValueError:
            raise CompssRequestError(400, f"{where}: {kind} value {text[:40]!r} is not an integer") from None
        if not low <= number <= high:
            raise CompssRequestError(400, f"{where}: {number} is out of range for {kind}")
        return number
    if kind in ("FLOAT_T", "DOUBLE_T"):
        try:
            number = float(text.strip())
        except ValueError:
            raise CompssRequestError(400, f"{where}: {kind} value {text[:40]!r} is not a number") from None
        if math.isinf(number) and text.strip().lower().lstrip("+-") not in ("inf", "infinity"):
            raise CompssRequestError(400, f"{where}: {kind} value {text[:40]!r} is out of range")
        return number
    raise CompssRequestError(400, f"{where}: unknown parameter type {kind[:40]!r}")


def _string_array(array: ET.Element, where: str) -> list:
    component = (_text(array, "componentClassname") or "").strip()
    if component != "java.lang.String":
        raise CompssRequestError(400, f"{where}: only arrays of java.lang.String are supported, "
                                      f"not {component[:100] or 'an unnamed class'}")
    values = _one(array, "values")
    items = [] if values is None else list(values)
    if len(items) > MAX_PARAMS:
        raise CompssRequestError(400, f"{where}: more than {MAX_PARAMS} array elements")
    out = []
    for position, item in enumerate(items):
        if item.tag != "element":
            raise CompssRequestError(400, f"{where}: nested <{item.tag}> in an array is not supported")
        class_name = (_text(item, "className") or "java.lang.String").strip()
        if class_name != "java.lang.String":
            raise CompssRequestError(400, f"{where}: array element {position} is a {class_name[:100]}, "
                                          "not a java.lang.String")
        out.append(_string64(_value_text(item, f"{where}, element {position}"), f"{where}, element {position}"))
    return out


def _string64(text: str, where: str) -> str:
    """base64 -> UTF-8 -> without one leading '#' (the marker PyCOMPSs puts on strings)."""
    try:
        raw = base64.b64decode(_B64_SPACE.sub(b"", text.encode("ascii")), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise CompssRequestError(400, f"{where}: STRING_64_T value is not base64") from None
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CompssRequestError(400, f"{where}: STRING_64_T value is not base64 of UTF-8 text") from None
    return value[1:] if value.startswith("#") else value


def _boolean(text: str | None, where: str, default):
    if text is None:
        return default
    value = _BOOLEANS.get(text.strip().lower())
    if value is None:
        raise CompssRequestError(400, f"{where}: {text[:20]!r} is not a boolean (true/false)")
    return value


# --------------------------------------------------------------------- resources helpers


def _described(kind: str, name: str, description: ET.Element) -> ResourcesRequest:
    processors = []
    wrapper = _one(description, "processors")
    for el in ([] if wrapper is None else wrapper.findall("processor")):
        proc_type = (_stripped(el, "type") or "CPU").upper()
        units_text = _stripped(el, "computingUnits")
        if units_text is None or not units_text.isdigit() or int(units_text) > 1_000_000:
            shown = "nothing" if units_text is None else repr(units_text[:40])
            raise CompssRequestError(400, f"<processor> needs <computingUnits> as a count, not {shown}")
        processors.append(Processor(name=_stripped(el, "name") or UNASSIGNED, type=proc_type,
                                    units=int(units_text),
                                    architecture=_stripped(el, "architecture") or UNASSIGNED))
    if len(processors) > MAX_PARAMS:
        raise CompssRequestError(400, "too many processors")
    return ResourcesRequest(
        kind=kind,
        name=name,
        cpus=sum(p.units for p in processors if p.type == "CPU"),
        gpus=sum(p.units for p in processors if p.type == "GPU"),
        fpgas=sum(p.units for p in processors if p.type == "FPGA"),
        processors=tuple(processors),
        memory_size=_size(description, "memorySize"),
        memory_type=_label(description, "memoryType"),
        storage_size=_size(description, "storageSize"),
        storage_type=_label(description, "storageType"),
        os_type=_label(description, "operatingSystemType"),
        os_distribution=_label(description, "operatingSystemDistribution"),
        os_version=_label(description, "operatingSystemVersion"),
    )


def _size(parent: ET.Element, tag: str) -> float | None:
    text = _stripped(parent, tag)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise CompssRequestError(400, f"<{tag}> {text[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise CompssRequestError(400, f"<{tag}> must be finite")
    return None if value < 0 else value


def _label(parent: ET.Element, tag: str) -> str | None:
    text = _stripped(parent, tag)
    return None if not text or text == UNASSIGNED else text
