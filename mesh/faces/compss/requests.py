"""The COMPSs agent REST requests as records: what a parsed body says, and the refusal.

:class:`CompssRequestError` carries the HTTP status the REST server answers; the frozen
records (:class:`StartApplication`, :class:`ResourcesRequest`...) are what
:mod:`mesh.faces.compss.xmlbodies` makes of the XML bodies. No parsing and no I/O here; import these
names from :mod:`mesh.faces.compss.answers`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

UNASSIGNED = "[unassigned]"  # COMPSs' "not given" for text fields (numbers use -1)


class CompssRequestError(ValueError):
    """A request the COMPSs-compatible endpoints refuse: answer ``status`` with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"CompssRequestError({self.status}, {self.message!r})"


# --------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Orchestrator:
    """``<orchestrator>``: whom the real agent notifies when the request ends."""

    host: str | None
    method: str | None  # GET | POST | PUT | DELETE
    operation: str | None


@dataclass(frozen=True)
class StartApplication:
    """A parsed ``PUT /COMPSs/startApplication``.

    ``module`` is ``<className>`` and ``function`` is ``<methodName>``: the call to run is
    ``module:function(*args)``. ``args`` follow ``<parameters>`` in document order (the
    ``paramId`` attributes are informational, as in COMPSs), decoded by ``<type>``:

    * ``STRING_64_T``: base64 of UTF-8 text (whitespace inside the base64 is dropped),
      then one leading ``'#'`` is removed: compss_agent_call_operation --lang=PYTHON sends
      base64('#' + argument), and the '#' is PyCOMPSs' string marker. Text without the
      '#' is kept whole. Arguments are always ``str`` -- ``2`` arrives as ``"2"``, as in
      COMPSs, where the Python function gets the string too.
    * ``STRING_T``: the text exactly as sent (no base64, no '#', whitespace kept).
    * ``CHAR_T``: a one-character ``str``.
    * ``BOOLEAN_T``: ``true``/``false``/``1``/``0`` -> ``bool``.
    * ``BYTE_T``, ``SHORT_T``, ``INT_T``, ``LONG_T``, ``LONGLONG_T``: ``int`` within the
      Java type's range.
    * ``FLOAT_T``, ``DOUBLE_T``: ``float`` (``NaN``, ``INF``, ``-INF`` accepted).
    * ``NULL_T``: ``None``.
    * ``OBJECT_T`` holding an ``<array>`` of ``java.lang.String`` (what
      ``compss_agent_call_operation --array`` sends): one ``list`` argument whose items
      are decoded like ``STRING_64_T`` (for PYTHON the script base64-encodes them too).
    * anything else (a serialized Java object, files, collections, streams, PSCOs...):
      400, since a mesh call takes plain JSON-like data only.

    Every parameter must be an input (``<direction>IN`` or ``<accessMode>READ``, or
    neither); ``<target>``, ``<prolog>`` and ``<epilog>`` are refused (400) rather than
    silently dropped. Kept for the REST face: ``action`` and ``forward_to``
    (``<action><actionName>stop`` with ``<forwardTo><agent>`` URLs: it stops this agent,
    and tells those to stop, when the call ends); not acted on: ``cei_class``
    (``<ceiClass>``, a Java interface in COMPSs), ``has_result``, ``service_instance_id``
    and ``orchestrator``. Ignored: each
    parameter's ``paramName``, ``prefix``, ``contentType``, ``stdIOStream``, ``weight``,
    ``keepRename`` and the ``xsi:type`` of values, and unknown elements (JAXB ignores them
    too).
    """

    lang: str
    module: str
    function: str
    args: tuple = ()
    param_types: tuple[str, ...] = ()
    cei_class: str | None = None
    has_result: bool = False
    service_instance_id: str | None = None
    action: str | None = None
    forward_to: tuple[str, ...] = ()
    orchestrator: Orchestrator | None = None

    @property
    def stop_after(self) -> bool:
        """The request asks the agent to stop once the call has ended."""
        return (self.action or "").lower() == "stop"


@dataclass(frozen=True)
class Processor:
    """One ``<processor>`` of a resource description."""

    name: str
    type: str  # CPU | GPU | FPGA | ...
    units: int  # <computingUnits>
    architecture: str = UNASSIGNED


@dataclass(frozen=True)
class ResourcesRequest:
    """A parsed ``PUT /COMPSs/addResources`` (``kind == "add"``) or
    ``PUT /COMPSs/removeResources`` (``kind == "reduce"``).

    ``name`` is the node the request is about (``<name>`` of ``<externalResource>`` or
    ``<nioResource>``; ``<workerName>`` of ``<reduceNode>``). What to do with it is the
    agent's business (the REST face, after COMPSs agents: adding under the agent's own
    name grows its slots and labels, under another name, or its address with another
    agent's ``Port``, links that agent as a neighbour at :attr:`address`; reducing drains
    lazily, running tasks finish).
    ``cpus``/``gpus``/``fpgas`` sum the ``computingUnits`` of the
    processors of each type. ``properties`` are the adaptor's ``<resourceConf>``:
    ``(Name, Value)`` of each ``<Property>`` (external adaptors, e.g. the CommAgent's
    ``Port``) or ``(tag, text)`` of its other children (NIO). Numbers COMPSs sends as
    -1 ("unassigned") and text sent as ``[unassigned]`` become ``None``.
    """

    kind: str  # "add" | "reduce"
    name: str
    cpus: int = 0
    gpus: int = 0
    fpgas: int = 0
    processors: tuple[Processor, ...] = ()
    memory_size: float | None = None  # GB, as COMPSs
    memory_type: str | None = None
    storage_size: float | None = None
    storage_type: str | None = None
    os_type: str | None = None
    os_distribution: str | None = None
    os_version: str | None = None
    adaptor: str | None = None  # add only: the adaptor class COMPSs would use
    resource_element: str | None = None  # add only: "externalResource" | "nioResource"
    properties: tuple[tuple[str, str], ...] = ()

    @property
    def port(self) -> int | None:
        """The ``Port`` adaptor property (the CommAgent's port), if any and valid."""
        for key, value in self.properties:
            if key.lower() == "port":
                value = value.strip()
                if value.isdigit() and 0 < int(value) < 65536:
                    return int(value)
        return None

    @property
    def address(self) -> str | None:
        """``name:Port`` when a ``Port`` property was given (where to link a neighbour)."""
        port = self.port
        return None if port is None else f"{self.name}:{port}"
