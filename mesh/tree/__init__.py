"""The latency tree core: see ``core.py`` for its theory of operation.

Modules: ``advert.py`` (the ordering of adverts: labels, root keys; the record itself,
``Advert``, is the wire's), ``config.py`` (settings and actions), ``core.py``
(``LatencyTree``: election, parent choice, loop freedom, repair, sending),
``neighbours.py`` (``Neighbours``, the bounded neighbour set the tree owns: admission,
eviction, offers and which to probe). Drawing the whole tree is a face's job
(``mesh.faces.treeview``).

May import: ``mesh.wire`` (the ``Advert`` record) and ``mesh.errors``; never a socket, a
thread or a clock, nor anything above it.

How a shell drives it (the agent, or ``mesh/sim/tree_sim.py``)
--------------------------------------------------------------
* ``LatencyTree(node_id, score, random.Random(...), TreeConfig(), now)``; ``score`` is
  the capacity score used in root elections (``set_score`` changes it later).
* ``offer(member_id, rtt, now)``: a live member from membership that we could
  measure (``rtt`` in seconds if membership has one, else None). Offer members as
  they join and now and then a few at random; the core keeps ``max_offers``.
* ``heard(peer_id, advert, rtt, now)``: an ``Advert`` arrived from ``peer_id``; ``rtt``
  is the latest round-trip sample to that peer (seconds, None if none yet). The
  core smooths samples itself (EWMA, ``rtt_alpha``).
* ``lost(member_id, now)``: membership marked a member dead or left.
* ``tick(now)``: at the latest at ``next_timer(now)``.

Every call returns a list of actions:

* ``SendAdvert(peer, advert)``: send it now, as a message of its own or on a
  heartbeat leaving at once: the root's seq runs down the tree hop by hop and
  repairs wait for answers (``advert.ask == 1``), so delays add up per hop.
* ``Probe(peer)``: connect to ``peer`` and heartbeat it (its RTT feeds ``heard``).
* ``ParentChanged(old, new, reason)``, ``RootChanged(old, new, term)``: for logs and
  status. ``neighbours()`` lists the peers worth heartbeating; others may be closed.

Queries: ``parent``, ``children``, ``root``, ``term``, ``rank`` (path latency to the
root, seconds), ``depth``, ``state``, ``neighbours()``, ``candidates()``, ``view()``
(plain data: this node's place and neighbours; what ``mesh tree`` draws). A malformed advert is
counted (``counters["bad_adverts"]``) and dropped; only our own misuse raises
(``LocalProtocolError``).
"""

from mesh.tree.advert import NO_ROUTE, Advert
from mesh.tree.config import Action, ParentChanged, Probe, RootChanged, SendAdvert, TreeConfig
from mesh.tree.core import STATES, TRANSITIONS, LatencyTree

__all__ = [
    "NO_ROUTE", "STATES", "TRANSITIONS", "Action", "Advert", "LatencyTree", "ParentChanged",
    "Probe", "RootChanged", "SendAdvert", "TreeConfig",
]
