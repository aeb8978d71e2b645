"""Command line interface: ``mesh join``, ``keygen``, ``token``, ``call``, ``run``, ``status``,
``peers``, ``tree``, ``resources``, ``demo``.

Exit codes of client commands (CONTRACT.md): 0 ok, 1 the function raised (remote
traceback on stderr), 2 usage error, 3 no agent reachable.
"""

from __future__ import annotations

import ast
import json
import logging
import socket
import sys

import click

EXIT_RAISED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
DEFAULT_AGENT = "127.0.0.1:46102"


def parse_arg(text: str):
    """A CLI argument: a Python literal when it parses as one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1000, "KIB": 1 << 10, "M": 1 << 20, "MB": 1000**2,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1000**3, "GIB": 1 << 30, "T": 1 << 40, "TB": 1000**4,
          "TIB": 1 << 40}


def _size(text: str, option: str) -> int:
    """``512M``, ``2G``, ``1.5GiB``, ``1000000`` -> bytes (K/M/G/T alone are powers of 1024)."""
    t = text.strip().upper()
    digits = t.rstrip("KMGTIB")
    unit = t[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value > 0:
        raise click.BadParameter(f"{text!r}: expected a size such as 512M, 2G or 1000000",
                                 param_hint=option)
    return int(value * _UNITS[unit])


def _address(text: str, what: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}", param_hint=what)
    return text


def _primary_ipv4() -> str:
    """The address a UDP socket would use to leave the machine (no packet is sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: connect() on UDP sends nothing
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mesh")
def main() -> None:
    """mesh: a peer-to-peer compute mesh for edge devices."""


# --------------------------------------------------------------------------- join


@main.command()
@click.option("--name", default=None, help="Human name of this agent (default: hostname).")
@click.option("--interface", "interfaces", multiple=True,
              help="IPv4 address to bind and announce on (default: the primary non-loopback address).")
@click.option("--comm-port", type=click.IntRange(0, 65535), default=46102, show_default=True,
              help="Agent-to-agent port; 0 picks a free one.")
@click.option("--rest-port", type=click.IntRange(-1, 65535), default=46101, show_default=True,
              help="REST port (JSON and COMPSs endpoints; runs code). Every request needs "
                   "Authorization: Bearer $(mesh token), a Host naming this agent, no foreign Origin "
                   "(see docs/rest.md). On --interface with a mesh key, on 127.0.0.1 only without. "
                   "0 picks a free one, -1 disables REST.")
@click.option("--rest-open", is_flag=True,
              help="Let COMPSs' client scripts use the /COMPSs endpoints WITHOUT a token: anyone who "
                   "can reach the REST port can then run code as this user. Host, Origin and "
                   "Content-Type are still checked.")
@click.option("--peer", "peers", multiple=True, envvar="MESH_PEERS",
              help="Seed peer HOST:PORT (repeatable; also MESH_PEERS=host:port,host:port).")
@click.option("--no-mdns", is_flag=True, help="Use seeds and gossip only; no mDNS.")
@click.option("--cpus", type=click.IntRange(0, 1024), default=None,
              help="Worker slots (default: the number of cores).")
@click.option("--memory", default=None, metavar="SIZE",
              help="Memory offered to tasks, e.g. 512M or 2G (default: the machine's); "
                   "tasks with @constraint(memory=...) above it run elsewhere.")
@click.option("--label", "labels", multiple=True, metavar="TEXT",
              help="A capability of this device for @constraint(labels=[...]), e.g. gpu or "
                   "an image name (repeatable).")
@click.option("--state-file", type=click.Path(dir_okay=False), default=None,
              help="Write {id,name,comm,rest,pid} as JSON here once ready.")
@click.option("--profile", type=click.Choice(["default", "fast"]), default="default",
              show_default=True, help="Failure-detection timings.")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="Mesh key file (also MESH_KEY_FILE, MESH_KEY; default ~/.config/mesh/key).")
@click.option("--insecure", is_flag=True, help="Plaintext, unauthenticated mesh (anyone can run code here).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def join(name, interfaces, comm_port, rest_port, rest_open, peers, no_mdns, cpus, memory, labels,
         state_file, profile, key_file, insecure, log_level):
    """Run an agent in the foreground until SIGINT/SIGTERM (graceful leave)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if rest_open and rest_port < 0:
        raise click.UsageError("--rest-open opens the REST port's COMPSs endpoints, and --rest-port -1 "
                               "turns REST off")
    seeds = []
    for item in peers:
        for part in item.split(","):
            if part.strip():
                seeds.append(_address(part.strip(), "--peer/MESH_PEERS"))
    interface = interfaces[0] if interfaces else _primary_ipv4()
    if len(interfaces) > 1:
        click.echo("warning: several --interface values: this version binds and announces on the first",
                   err=True)
    key = _join_key(key_file, insecure, interface)
    if cpus is None:
        import psutil

        cpus = psutil.cpu_count() or 1
    if memory is None:
        import psutil

        memory_bytes = psutil.virtual_memory().total
    else:
        memory_bytes = _size(memory, "--memory")
    for label in labels:
        if not label or len(label) > 200 or any(c.isspace() for c in label):
            raise click.BadParameter(f"{label!r}: a label is one word of at most 200 characters",
                                     param_hint="--label")
    from mesh.wire.messages import MAX_LIST

    if len(set(labels)) > MAX_LIST:  # (every heartbeat carries them, in one list field)
        raise click.BadParameter(f"{len(set(labels))} labels: at most {MAX_LIST}",
                                 param_hint="--label")
    from mesh.agent.agent import Agent, AgentConfig, install_signal_handlers

    config = AgentConfig(
        name=name or socket.gethostname(), interface=interface, comm_port=comm_port,
        peers=seeds, mdns=not no_mdns, cpus=cpus, state_file=state_file,
        profile=profile, key=key, memory=memory_bytes, labels=sorted(set(labels)),
    )
    try:
        agent = Agent(config)
    except Exception as exc:  # zmq bind errors and the like: say what, exit cleanly
        raise click.ClickException(f"cannot start the agent on {interface}:{comm_port}: {exc}") from exc
    install_signal_handlers(agent)
    if rest_port >= 0:  # REST is a face of the agent: it gets the agent's handle, no more
        from mesh.faces.rest import RestServer
        from mesh.faces.rest_auth import new_token

        try:  # with a key: on the interface, the key's token; else loopback, a random token
            rest = RestServer(agent.handle(), interface if key is not None else "127.0.0.1",
                              rest_port, key.rest_token() if key is not None else new_token(),
                              rest_open=rest_open)
        except OSError as exc:
            agent.close()
            raise click.ClickException(f"cannot serve REST on port {rest_port}: {exc}") from exc
        agent.attach("rest", rest)
    security = f"key {key.fingerprint()}" if key is not None else "PLAINTEXT"
    click.echo(f"mesh agent {config.name} ({agent.node_id[:8]}): comm tcp://{agent.address}, "
               f"{cpus} slot(s), mDNS {'on ' + interface if config.mdns else 'off'}, {security}", err=True)
    agent.start()
    agent.run()
    if agent.faults.storm is not None:  # it left because the same fault repeated in a loop
        raise click.ClickException(f"the agent left the mesh: {agent.faults.storm}")


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _load_key(key_file):
    from mesh import keys

    try:
        return keys.load(key_file)
    except keys.MeshKeyError as exc:
        raise click.UsageError(str(exc)) from None


def _join_key(key_file, insecure: bool, interface: str):
    """The agent's key, or None for plaintext; refuses plaintext off loopback."""
    if insecure:
        click.echo("WARNING: --insecure: this agent runs any code that anyone who can reach "
                   f"{interface} sends it. Use only on a network you fully trust.", err=True)
        return None
    key = _load_key(key_file)
    if key is not None:
        return key
    if _is_loopback(interface):
        click.echo("warning: no mesh key; plaintext on loopback (any local user can run code here). "
                   "`mesh keygen` makes a key.", err=True)
        return None
    raise click.UsageError(
        f"no mesh key, and {interface} is not loopback. Make one with `mesh keygen` "
        "(writes ~/.config/mesh/key), copy that file to each device (or pass --key-file / "
        "MESH_KEY_FILE), or run a plaintext mesh with --insecure.")


# --------------------------------------------------------------------------- keys


@main.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key file.")
def keygen(path, force):
    """Write a new mesh key to PATH (default ~/.config/mesh/key), mode 0600."""
    from mesh import keys

    path = path or keys.default_path()
    key = keys.MeshKey.generate()
    try:
        keys.write(path, key, force=force)
    except keys.MeshKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote mesh key {key.fingerprint()} to {path}")
    click.echo("copy it to every device of the mesh (same path, or --key-file / MESH_KEY_FILE)")


@main.command()
@click.option("--agent", default=DEFAULT_AGENT, envvar="MESH_AGENT", show_default=True,
              help="The agent's comm address HOST:PORT, as for the other commands (also MESH_AGENT).")
@click.option("--key-file", type=click.Path(dir_okay=False), default=None,
              help="Mesh key file (also MESH_KEY_FILE, MESH_KEY, ~/.config/mesh/key).")
def token(agent, key_file):
    """Print the bearer token for the agent's REST interface.

    The token the agent wrote to its private runtime directory, when it runs on this
    machine as this user; else the one derived from the mesh key (the same on every agent
    of the mesh). Exit 3 when there is neither."""
    from mesh.faces import rest_auth

    _address(agent, "--agent")
    try:
        click.echo(rest_auth.read_token(agent))
        return
    except rest_auth.TokenFileError as exc:
        why = str(exc)
    key = _load_key(key_file)
    if key is not None:
        click.echo(key.rest_token())
        return
    click.echo(f"error: no REST token for the agent at {agent}: {why}; and no mesh key to derive "
               "it from (--key-file, MESH_KEY_FILE, MESH_KEY, ~/.config/mesh/key)", err=True)
    sys.exit(EXIT_UNREACHABLE)


# --------------------------------------------------------------------------- clients


def _agent_option(f):
    f = click.option("--agent", default=DEFAULT_AGENT, envvar="MESH_AGENT", show_default=True,
                     help="An agent's comm address HOST:PORT (also MESH_AGENT).")(f)
    f = click.option("--timeout", type=float, default=5.0, show_default=True,
                     help="Seconds to wait for the agent to answer.")(f)
    f = click.option("--key-file", type=click.Path(dir_okay=False), default=None,
                     help="Mesh key file (also MESH_KEY_FILE, MESH_KEY, ~/.config/mesh/key).")(f)
    return f


def _client(agent: str, timeout: float, key_file):
    from mesh.client.client import Client
    from mesh.errors import AgentUnreachable

    _address(agent, "--agent")
    key = _load_key(key_file)
    try:
        return Client(agent, timeout=timeout, key=key)
    except AgentUnreachable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)


@main.command()
@_agent_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def status(agent, timeout, key_file, as_json):
    """This agent: id, name, uptime, slots, queue, counts, peers alive."""
    with _client(agent, timeout, key_file) as client:
        body = client.query("status", timeout)
    if as_json:
        click.echo(json.dumps(body))
        return
    cpus = body["cpus"]
    lines = [
        f"agent     {body['name']} ({body['id'][:8]}) at {body['address']}, pid {body['pid']}",
        f"uptime    {body['uptime_s']:.1f} s",
        f"slots     {cpus['free']} free of {cpus['total']}",
        f"calls     {body['running']} running, {body['queued']} queued, {body['done']} done, "
        f"{body['failed']} failed, {body['forwarded']} forwarded",
        f"peers     {body['peers_alive']} alive",
    ]
    if body.get("labels") or body.get("memory"):
        lines.append(f"offers    {body.get('memory', 0) / (1 << 30):.1f} GiB"
                     + (", labels " + " ".join(body["labels"]) if body.get("labels") else ""))
    objects = body.get("objects")
    if objects:
        lines.append(f"objects   {objects['objects']} kept ({objects['bytes'] / (1 << 20):.1f} of "
                     f"{objects['max_bytes'] / (1 << 20):.0f} MiB), {objects['served']} served, "
                     f"{objects['fetched']} fetched, {objects['lost']} lost")
    lines += [
        "security  " + ("CURVE, mesh key" if body.get("secure") else "PLAINTEXT")
        + f" ({body['auth']['rejected']} rejected, {body['auth']['handshake_failures']} failed handshakes)",
        "local     " + (f"{body['local_socket']} ({body['local']['connections']} connected, "
                        f"{body['local']['strangers']} strangers refused)"
                        if body.get("local_socket") and body.get("local") else "none (TCP only)"),
        "rest      " + _rest_line(body.get("rest")),
        "dropped   " + (", ".join(f"{k} {v}" for k, v in sorted(body["dropped"].items()) if v) or "none"),
    ]
    click.echo("\n".join(lines))


def _rest_line(rest: dict | None) -> str:
    if rest is None:
        return "off"
    refused = ", ".join(f"{k} {v}" for k, v in sorted(rest["refused"].items()) if v) or "none"
    access = ("OPEN: /COMPSs/* without a token (--rest-open), /v1/* with it" if rest["open"]
              else "bearer token")
    return f"http://{rest['address']}, {access} (refused: {refused})"


@main.command()
@_agent_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def peers(agent, timeout, key_file, as_json):
    """Known members with state, incarnation, round trip and load."""
    with _client(agent, timeout, key_file) as client:
        body = client.query("peers", timeout)
    if as_json:
        click.echo(json.dumps(body))
        return
    rows = [("NAME", "ID", "ADDRESS", "STATE", "RTT ms", "CPUS", "LOAD", "INC", "LABELS")]
    for p in body:
        rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.2f}"
        load = "-" if p["load"] is None else str(p["load"])
        rows.append((p["name"], p["id"][:8], p["address"], p["state"], rtt, str(p["cpus"]), load,
                     str(p["incarnation"]), ",".join(p.get("labels") or ()) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if len(rows) == 1:
        click.echo("(no peers known yet)")


@main.command()
@_agent_option
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "json"]), default="text",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
def tree(agent, timeout, key_file, fmt, as_json):
    """The latency tree, gathered from every live agent (text, Graphviz DOT or JSON)."""
    import json as _json

    from mesh.client.client import Client
    from mesh.faces.treeview import gather, render_dot, render_text

    key = _load_key(key_file)
    with _client(agent, timeout, key_file) as client:
        doc = gather(lambda address: Client(address, timeout=timeout, key=key), client)
    if as_json or fmt == "json":
        click.echo(_json.dumps(doc))
    elif fmt == "dot":
        click.echo(render_dot(doc))
    else:
        click.echo(render_text(doc))


@main.command(context_settings={"ignore_unknown_options": True})
@_agent_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.argument("function")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def call(agent, timeout, key_file, as_json, function, args):
    """Run MODULE:FUNCTION with ARGS (Python literals, else strings) on the mesh.

    The agent imports MODULE; the result is printed. --timeout bounds the whole call."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from mesh.errors import RemoteError

    module, sep, func = function.partition(":")
    if not sep or not module or not func:
        raise click.UsageError(f"expected MODULE:FUNCTION, got {function!r}")
    values = [parse_arg(a) for a in args]
    with _client(agent, timeout, key_file) as client:
        fut = client.call(function, tuple(values))
        try:
            value = fut.result(timeout)
        except FutureTimeout:
            click.echo(f"error: no result within {timeout} s", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except RemoteError as exc:
            click.echo(exc.traceback or f"{exc.type_name}: {exc.message}", err=True)
            click.echo(f"error: {exc.type_name}: {exc.message} (on agent {exc.agent})", err=True)
            sys.exit(EXIT_RAISED)
        except Exception as exc:
            cause = exc.__cause__
            click.echo(str(cause) if cause is not None else repr(exc), err=True)
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_RAISED)
    if as_json:
        click.echo(json.dumps(value, default=repr))
    else:
        click.echo(value if isinstance(value, str) else repr(value))


@main.command(context_settings={"ignore_unknown_options": True})
@_agent_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--graph", "graph_file", type=click.Path(dir_okay=False), default=None,
              help="Write the run's task graph as Graphviz DOT here (nodes coloured by agent).")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(agent, timeout, key_file, as_json, graph_file, script, args):
    """Run SCRIPT's main(*ARGS) on the mesh as the main program of a task graph.

    ARGS are Python literals when they parse, else strings. Progress (calls done on
    the mesh) goes to stderr; at the end, a summary per agent."""
    from mesh.program.runner import run_script

    with open(script, encoding="utf-8") as f:
        source = f.read()
    values = tuple(parse_arg(a) for a in args)
    with _client(agent, timeout, key_file) as client:
        before = _done_per_agent(client, timeout)
        fut = client.submit(run_script, source, script, values, graph_file is not None)
        tty = sys.stderr.isatty()
        last = ""
        while True:
            try:
                value = fut.result(0.5)
                break
            except Exception as exc:  # noqa: BLE001 - a time-out here only means "not yet"
                if fut.done():
                    cause = exc.__cause__
                    click.echo(str(cause) if cause is not None else repr(exc), err=True)
                    click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
                    sys.exit(EXIT_RAISED)
            line = _progress(client, before, timeout, fut.call_id)
            if line != last:
                click.echo(("\r" + line) if tty else line, err=True, nl=not tty)
                last = line
        if tty and last:
            click.echo("", err=True)
        after = _done_per_agent(client, timeout)
    if graph_file is not None:
        value, dot = value
        with open(graph_file, "w", encoding="utf-8") as f:
            f.write(dot)
        click.echo(f"task graph written to {graph_file}", err=True)
    ran = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    summary = ", ".join(f"{name} {n}" for name, n in sorted(ran.items()) if n > 0)
    click.echo(f"calls run per agent: {summary or 'none'}", err=True)
    if as_json:
        click.echo(json.dumps(value, default=repr))
    else:
        click.echo(value if isinstance(value, str) else repr(value))


def _done_per_agent(client, timeout: float) -> dict[str, int]:
    """Calls finished so far on this agent and every live peer (by name)."""
    from mesh.client.client import Client

    done = {}
    status = client.query("status", timeout)
    done[status["name"]] = status["done"] + status["failed"] - status["forwarded"]
    for p in client.query("peers", timeout):
        if p["state"] != "alive":
            continue
        try:
            with Client(p["address"], timeout=timeout, key=client.key) as other:
                s = other.query("status", timeout)
            done[s["name"]] = s["done"] + s["failed"] - s["forwarded"]
        except Exception:  # a peer that does not answer is left out of the summary
            continue
    return done


def _progress(client, before: dict[str, int], timeout: float, call_id: str) -> str:
    """One progress line: the task graph's done/total when the main program runs on
    this agent, else what this agent sees."""
    s = client.query("status", timeout)
    p = client.query("progress", timeout, arg=call_id)
    mesh_part = f"{s['running']} running here, {s['queued']} queued, {s['peers_alive']} peer(s)"
    if not p:
        done = s["done"] + s["failed"] - before.get(s["name"], 0)
        return f"{s['name']}: {done} call(s) finished here or through here; {mesh_part}"
    total, done, failed = p["total"], p["done"], p["failed"]
    width = 24
    filled = width * (done + failed) // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {done}/{total} tasks done, {failed} failed; {mesh_part}"


@main.group()
def resources():
    """COMPSs-style live resource changes: add, reduce, lost."""


def _change(agent, timeout, key_file, action, cpus=0, peer=""):
    with _client(agent, timeout, key_file) as client:
        try:
            body = client.resources(action, cpus, peer, timeout)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_RAISED)
    click.echo(f"{body['name']}: {body['cpus']['total']} slot(s), {body['cpus']['free']} free, "
               f"{body['peers_alive']} peer(s) alive")


@resources.command("add")
@_agent_option
@click.option("--cpus", type=click.IntRange(1, 1024), default=None, help="Grow this agent's slots by N.")
@click.option("--peer", default=None, help="Link the agent at HOST:PORT as a neighbour.")
def resources_add(agent, timeout, key_file, cpus, peer):
    """Add slots to the agent, or link another agent as its neighbour."""
    if (cpus is None) == (peer is None):
        raise click.UsageError("give exactly one of --cpus N or --peer HOST:PORT")
    if peer is not None:
        _address(peer, "--peer")
    _change(agent, timeout, key_file, "add", cpus or 0, peer or "")


@resources.command("reduce")
@_agent_option
@click.option("--cpus", type=click.IntRange(1, 1024), required=True, help="Remove N slots (running calls finish).")
def resources_reduce(agent, timeout, key_file, cpus):
    """Remove slots lazily: running calls finish first."""
    _change(agent, timeout, key_file, "reduce", cpus)


@resources.command("lost")
@_agent_option
@click.argument("member")
def resources_lost(agent, timeout, key_file, member):
    """Declare MEMBER (name or id) lost: dropped at once, its calls placed again."""
    _change(agent, timeout, key_file, "lost", 0, member)


@main.command()
@click.option("--agents", type=click.IntRange(1, 8), default=3, show_default=True)
@click.option("--calls", type=click.IntRange(1, 200), default=12, show_default=True)
def demo(agents, calls):
    """Start a small mesh on 127.0.0.1, spread calls over it, print where each ran, stop it."""
    from mesh.faces.demo import run_demo

    sys.exit(run_demo(agents, calls))


if __name__ == "__main__":
    main()
