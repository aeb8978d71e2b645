"""Every table of the cores is bounded, or shrinks when its subject is gone (issue 17).

Node ids are new on every start, so a long-lived mesh of churning devices meets new
ids for ever, and so does a program that makes calls for ever. Each core here is run
through 100,000 churned members or calls (join, work, die or leave, be forgotten),
pure and fast (no socket, no sleep, virtual time), and the size of each of its tables
is checked all along against a bound that does not grow with the churn.
"""

from __future__ import annotations

import random

import pytest

from mesh.discovery.membership import Forgotten, MemberChanged, Membership, Send, Timing
from mesh.program.lineage import Lineage
from mesh.sched.dispatch import Dispatcher, Forward, RunLocal, SendTo
from mesh.sched.objects import Objects, Ref
from mesh.tree import Advert, LatencyTree, TreeConfig
from mesh.wire.messages import (
    Call,
    Digest,
    Holds,
    Leave,
    Load,
    NodeInfo,
    Ping,
    PingReq,
    Pong,
    Result,
)

pytestmark = pytest.mark.timeout(120)

CHURN = 100_000
LOAD = Load(1, 1, 0, 0)


def node_id(i: int) -> str:
    return f"{i:032x}"


# ----------------------------------------------------------------------------- dispatcher


def dispatcher_sizes(d: Dispatcher) -> dict[str, int]:
    peers = d.peers
    return {"pending": len(d.pending), "peers": len(peers.slots), "lost": len(peers.lost),
            "suspected": len(peers.suspected), "orphans": sum(map(len, peers.orphans.values())),
            "orphan origins": len(peers.orphans), "backlog": len(d.backlog),
            "delegated": len(d.leases), "lease holders": len(d.leases.calls),
            "queues": len(peers.queues), "clients": len(d.clients)}


@pytest.mark.parametrize("steal", [True, False])
def test_the_dispatcher_forgets_peers_and_calls_that_are_gone(steal):
    """A window of 20 live peers; every step a new peer joins and the oldest is suspected,
    then lost, and later forgotten by membership (a few come back first). Calls run
    here for 1 to 30 steps, or go to peers, which answer most of them at once and keep
    the rest until they die (then they are placed again); peers' calls still running
    here when their origin dies are orphaned; clients cancel some calls."""
    rng = random.Random(1)
    d = Dispatcher("me", cpus=4, node_id="ME", prefetch=1, steal=steal)
    running: list[tuple[int, str]] = []  # (step it ends, call id)
    window, gone = [], []
    bound = {"pending": 200, "peers": 21, "lost": 100, "suspected": 21, "orphans": 200,
             "orphan origins": 100, "backlog": 400, "delegated": 200, "lease holders": 21,
             "queues": 21, "clients": 1}
    i = 0

    def do(acts) -> None:
        for a in acts:
            if isinstance(a, RunLocal):
                running.append((i + rng.randint(1, 30), a.call.call_id))
            elif isinstance(a, Forward) and rng.random() < 0.7:  # answered at once
                do(d.remote_result(Result(a.call.call_id, True, b"", "x", free=1), a.peer_id))

    orphaned = 0
    for i in range(CHURN):
        peer = node_id(i)
        do(d.peer_load(peer, f"p{i}", 2, rng.randint(0, 1), 0.001, queued=rng.randint(0, 2)))
        window.append(peer)
        if i % 2:
            do(d.submit(Call(f"c{i}", "m:f", b""), b"client"))  # ours
        else:  # a peer's
            do(d.submit(Call(f"h{i}", "m:f", b"", 1, peer), peer.encode(), from_peer=peer))
        done = [c for end, c in running if end <= i]
        running[:] = [(end, c) for end, c in running if end > i]
        for call_id in done:
            do(d.local_done(Result(call_id, True, b"", "me")))
        if rng.random() < 0.2:
            do(d.cancel(f"c{i - 1 - 2 * rng.randint(0, 25)}", b"client"))
        if len(window) > 20:
            old = window.pop(0)
            do(d.peer_suspect(old))
            do(d.peer_lost(old))
            orphaned += old in d.peers.orphans
            gone.append(old)
            if rng.random() < 0.05:
                do(d.peer_alive(old))  # it was only cut off
        if len(gone) > 50:
            do(d.peer_forgotten(gone.pop(0)))  # membership forgot it (forget_after)
        if i % 997 == 0:
            sizes = dispatcher_sizes(d)
            assert all(sizes[k] <= bound[k] for k in bound), (i, sizes)
    assert d.counters["accepted"] == CHURN and d.counters["done"] > CHURN / 2
    assert orphaned > 1000  # (origins did die with calls of theirs running here)


def test_leases_and_clients_are_forgotten_with_their_subjects():
    """Leases (mesh.sched.leases): every step a new client connects, is heard and makes a
    call; most go on talking for a while and leave, some go silent with calls in flight.
    Calls go to 8 peers, which answer lease questions (held, or lost on the way) and
    return results now and then; every 1,000 steps a peer dies and a new one takes its
    place. Time runs at 50 steps a lease period (1 s): the table of clients holds those
    heard from lately (within ``client_silence``), the leases those of pending calls."""
    rng = random.Random(5)
    d = Dispatcher("me", cpus=2, node_id="ME", prefetch=1, lease=1.0, client_silence=2.0,
                   max_pending=500)
    peers = [node_id(k) for k in range(8)]
    for p in peers:
        d.peer_load(p, p, 4, 4, 0.001)
    talking: list[tuple[int, bytes]] = []  # (last step it talks, identity)
    running: list[str] = []
    now, lost = 0.0, 0

    def do(acts) -> None:
        nonlocal lost
        for a in acts:
            if isinstance(a, RunLocal):
                running.append(a.call.call_id)
            elif isinstance(a, SendTo) and isinstance(a.message, Holds):
                ids = a.message.call_ids
                gone = [c for c in ids if rng.random() < 0.2]
                lost += len(gone)
                do(d.held([c for c in ids if c not in gone], gone, a.peer_id))

    for i in range(CHURN):
        now += 0.02
        client = b"c%d" % i
        d.heard(client)
        do(d.submit(Call(f"k{i}", "m:f", b""), client))
        if rng.random() < 0.95:
            talking.append((i + rng.randint(1, 200), client))
        talking[:] = [(end, c) for end, c in talking if end > i]
        for _, identity in talking[i % 10::10]:  # (each talks every 10 steps)
            d.heard(identity)
        do(d.tick(now))
        if running and rng.random() < 0.9:
            do(d.local_done(Result(running.pop(0), True, b"", "me")))
        p = peers[i % 8]
        at_p = [c for c in d.leases.calls.get(p, ())]
        if at_p and rng.random() < 0.15:
            do(d.remote_result(Result(at_p[0], True, b"", p, free=1), p))
        if i % 1000 == 999:
            dead = peers.pop(rng.randrange(len(peers)))
            do(d.peer_lost(dead))
            do(d.peer_forgotten(dead))
            peers.append(node_id(CHURN + i))
            do(d.peer_load(peers[-1], "new", 4, 4, 0.001))
        if i % 997 == 0:
            # those still talking (at most 200 steps' clients), and the silent ones heard
            # within the last client_rounds + 1 rounds (50 steps a round)
            assert len(d.clients) <= 200 + (d.client_rounds + 1) * 50, (i, len(d.clients))
            assert len(d.leases) <= len(d.pending) <= 500 and len(d.leases.calls) <= 8, i
    assert 1000 < d.counters["lease_lost"] <= lost  # (an answer may come for a call that moved)
    assert d.counters["client_gone"] > 1000  # (silent clients' calls were stopped)


def test_a_busy_lone_dispatcher_forgets_calls_cancelled_while_they_waited():
    """Its one slot is taken for good; clients submit calls and give up on each soon
    (a time-out): ids of calls that ended while waiting do not pile up in the backlog."""
    d = Dispatcher("me", cpus=1, node_id="ME")
    d.submit(Call("long", "m:f", b""), b"client")
    for i in range(CHURN):
        d.submit(Call(f"c{i}", "m:f", b""), b"client")
        if i >= 10:
            d.cancel(f"c{i - 10}", b"client")
        if i % 997 == 0:
            assert len(d.pending) <= 12 and len(d.backlog) <= 2 * 12 + 64 + 1, (i, len(d.backlog))
    (run,) = [a for a in d.local_done(Result("long", True, b"", "me")) if isinstance(a, RunLocal)]
    assert run.call.call_id == f"c{CHURN - 10}"  # the first still wanted


def test_blocked_calls_are_forgotten_however_they_end():
    """Nested graphs on a 2-slot agent: each call blocks on a child (lend) and ends by
    its result, a crash while blocked, its cancellation or a resumption: the record of
    blocked calls holds only calls that are blocked now."""
    d = Dispatcher("me", cpus=2, node_id="ME")
    for i in range(CHURN):
        parent, child = f"p{i}", f"k{i}"
        d.submit(Call(parent, "m:f", b""), b"client")
        d.submit(Call(child, "m:f", b""), b"client")
        d.lend(parent, True)
        d.local_done(Result(child, True, b"", "me"))
        way = i % 3
        if way == 0:
            d.local_done(Result(parent, False, b"", "me", "WorkerDied"))  # (blocked still)
        elif way == 1:
            d.cancel(parent, b"client")
        else:
            d.lend(parent, False)
            d.local_done(Result(parent, True, b"", "me"))
        if i % 997 == 0:
            assert len(d.local.blocked) == 0 and d.running == 0 and not d.pending, i
    assert d.counters["lent"] == CHURN


# ----------------------------------------------------------------------------- membership


def membership_sizes(core: Membership) -> dict[str, int]:
    return {"members": len(core.members), "conns": len(core.dialer.conns), "dials": len(core.dialer.dials),
            "sent": core.outbox.pending(), "relays": len(core.prober.relays), "order": len(core.prober.round),
            "urgent": len(core.prober.urgent), "gossip": len(core.gossip), "seeds": len(core.seeds)}


def test_membership_forgets_members_and_addresses_that_are_gone():
    """Members join (their Ping, one a second: slower than the probes), answer
    for a while, and leave (most) or fall silent; gossip, indirect probes and
    announcements name addresses nobody listens on. Every member passes through the
    table and is forgotten; nothing else piles up."""
    timing = Timing(forget_after=20.0, gossip_fanout=2)  # (fewer digests a message: faster)
    size = 24
    core = Membership(NodeInfo("f" * 32, "me", "me:1", 1), timing, random.Random(0), max_members=size)
    core.add_seed("seed:1", 0.0)
    live: list[int] = []
    now = 0.0
    joined = forgotten = 0
    window = timing.forget_after / 4  # pings are remembered this long (for their round trip)
    pings = window * 4 + window / timing.seed_retry * (size + 1)  # connections, slow pings
    bound = {"members": size, "conns": size + 1, "dials": size + 1, "sent": pings, "relays": 50,
             "order": 2 * size + 1, "urgent": size, "gossip": 2 * size, "seeds": 1}

    def info(n: int) -> NodeInfo:
        return NodeInfo(node_id(n), f"n{n}", f"n{n}:1", 1)

    def count(acts) -> list:
        nonlocal joined, forgotten
        joined += sum(isinstance(a, MemberChanged) and a.old == "new" for a in acts)
        forgotten += sum(isinstance(a, Forgotten) for a in acts)
        return acts

    for i in range(CHURN):
        now += 1.0
        rumour = [Digest(node_id(CHURN + i), "g", f"g{i}:1", "alive", 0)] if i % 10 == 0 else []
        count(core.receive(Ping(i, info(i), LOAD, rumour), now, identity=bytes.fromhex(node_id(i))))
        live.append(i)
        if i % 20 == 0:
            count(core.discovered(node_id(2 * CHURN + i), f"ghost{i}:1", now))
        if i % 30 == 0:
            count(core.receive(PingReq(i, node_id(3 * CHURN + i), f"far{i}:1", info(live[0]), []),
                               now, identity=bytes.fromhex(node_id(live[0]))))
        if len(live) > 12:
            n = live.pop(0)
            if n % 100 and node_id(n) in core.members:  # it leaves; one in 100 falls silent
                count(core.receive(Leave(node_id(n), 0), now, identity=bytes.fromhex(node_id(n))))
        for t in (now - 0.5, now):
            for act in count(core.tick(t)):  # the live ones answer
                if isinstance(act, Send) and isinstance(act.message, Ping) and act.address[0] == "n":
                    n = int(act.address[1:].split(":")[0])
                    if n in live:  # (any message is a sign of life, as the agent says)
                        count(core.heard_from(node_id(n), t))
                        count(core.receive(Pong(act.message.seq, info(n), LOAD), t, via=act.address))
        if i % 997 == 0:
            sizes = membership_sizes(core)
            assert all(sizes[k] <= bound[k] for k in bound), (i, sizes)
    assert joined >= 0.9 * CHURN and forgotten >= joined - size, (joined, forgotten)
    assert "seed:1" in core.dialer.conns  # a seed is never forgotten


def test_members_joining_faster_than_they_are_probed_do_not_pile_up():
    """A burst: members join and leave between two ticks; the round robin of probe
    targets keeps no more than twice the table."""
    core = Membership(NodeInfo("f" * 32, "me", "me:1", 1), Timing(), random.Random(0), max_members=8)
    for i in range(CHURN // 10):
        me = bytes.fromhex(node_id(i))
        core.receive(Ping(i, NodeInfo(node_id(i), f"n{i}", f"n{i}:1", 1), LOAD), 0.0, identity=me)
        core.receive(Leave(node_id(i), 0), 0.0, identity=me)
        assert len(core.prober.round) <= 2 * 8 + 1 and len(core.members) <= 8, i
    assert core.tick(0.0) is not None and core.prober.urgent == []


# ----------------------------------------------------------------------------- tree


def test_the_tree_forgets_neighbours_that_are_gone():
    """A node under a root R: members are offered, probed, become children or
    candidates, and die (reported lost, or silent)."""
    rng = random.Random(3)
    cfg = TreeConfig(period=1.0)
    tree = LatencyTree("me", 1.0, random.Random(0), cfg, 0.0)
    now = 0.0
    seq = 0
    live: list[str] = []
    for i in range(CHURN):
        now += 0.05
        if i % 20 == 0:
            seq += 1
            tree.heard("R", Advert("R", 0, 1, 100.0, "", seq, 0.0, "", [], seq), 0.01, now)
        peer = node_id(i)
        tree.offer(peer, 0.002, now)
        child = rng.random() < 0.3
        tree.heard(peer, Advert("R", 0, 1, 100.0, "", seq, 0.02, "me" if child else "R",
                                ["me", "R"] if child else ["R"], 1), 0.003, now)
        live.append(peer)
        if len(live) > 40:
            old = live.pop(0)
            if rng.random() < 0.5:
                tree.lost(old, now)  # else it falls silent and is forgotten
        if i % 10 == 0:
            tree.tick(now)
        if i % 997 == 0:
            sizes = {"peers": len(tree.peers), "children": len(tree.nbrs.children),
                     "offers": len(tree.nbrs.offers), "dead": len(tree._dead)}
            # the live ones, plus those silent for less than forget_after periods
            silent = int(cfg.forget_after * cfg.period / 0.05 * 1.3)
            assert sizes["peers"] <= 41 + silent and sizes["offers"] <= cfg.max_offers, (i, sizes)
            assert sizes["dead"] <= cfg.dead_roots, (i, sizes)


# ----------------------------------------------------------------------------- objects, lineage


def test_the_object_store_forgets_objects_and_fetches_that_are_gone():
    rng = random.Random(4)
    objects = Objects("me", max_bytes=1 << 20, cache_bytes=64 << 10, fetch_timeout=5.0)
    now = 0.0
    for i in range(CHURN):
        now += 0.01
        origin, owner = node_id(i // 100), f"s{i // 50}"
        objects.put(f"o{i}", b"x" * 1000, origin, owner)
        objects.get(f"r{i}", node_id(i % 97 + 1), f"w{i}", now)  # a fetch from a holder
        if rng.random() < 0.8:
            objects.fetched(f"r{i}", b"y" * 500)
        if i % 3 == 0:
            objects.free([f"o{i - 10}"])
        if i % 50 == 49:
            objects.owner_closed(f"s{i // 50}")
        if i % 100 == 99 and rng.random() < 0.5:
            objects.origin_lost(node_id(i // 100))
        if i % 10 == 0:
            objects.tick(now)
        if i % 997 == 0:
            assert objects.nbytes <= objects.max_bytes and len(objects.stored) <= 1100
            assert objects.cached <= objects.cache_bytes and len(objects.cache) <= 140
            assert len(objects.fetching) <= 5.0 / 0.01 + 20
            assert len(objects.closed) <= objects.max_closed


def test_lineage_forgets_the_outputs_of_producers_it_forgot():
    """Tasks with outputs kept at agents, some of them recomputed (their lost outputs
    renamed to new ones): ``made`` and ``renamed`` follow ``entries``, which is bounded."""
    lin = Lineage(max_entries=100)
    for i in range(CHURN):
        out = Ref(f"o{i}", "h", 200_000)
        lin.record(f"t{i}", None, None, (), [("v", out)])
        if i % 3 == 0:  # its output was lost and recomputed
            assert lin.recover(f"o{i}", "then") == "started"
            lin.rerun_done(f"t{i}", [("v", Ref(f"o{i}-again", "h", 200_000))])
            assert lin.latest(f"o{i}").oid == f"o{i}-again"
        if i % 997 == 0:
            assert len(lin.entries) <= 100, i
            assert len(lin.made) <= 2 * 100 and len(lin.renamed) <= 100, (i, len(lin.made),
                                                                             len(lin.renamed))
