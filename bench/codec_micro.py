"""Hot-loop cost of the wire codec: `python bench/codec_micro.py [--quick]`.

Times (timeit, best of several repeats, microseconds per call) encode and decode of a
typical `Call` and `Result` and `new(Call, ...)`, for the generated codec that
`mesh.wire.messages` uses and for the generic reference path (`Codec(..., generate=False)`),
side by side, with cbor2's own `dumps`/`loads` of the same maps for scale. A short table
goes to stdout; the LAST stdout line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402

from mesh.wire import messages as m  # noqa: E402
from mesh.wire.codec import Codec  # noqa: E402


def per_call_us(fn, number: int, repeat: int) -> float:
    """Best of ``repeat`` runs of ``number`` calls, in microseconds per call."""
    return round(min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, for smoke tests")
    args = parser.parse_args(argv)
    number, repeat = (2_000, 3) if args.quick else (100_000, 7)

    # what the client sends per task, and what comes back
    call = m.new(m.Call, call_id="9f3c1a2b4d5e6f70" + "0000002a", function="bench.taskfns:square",
                 payload=pickle.dumps(((7,), {}), protocol=5), avoid=[], inputs=[],
                 owner="a1b2c3d4e5f60718", needs=None)
    result = m.Result(call.call_id, True, pickle.dumps(49, protocol=5), "pi-1", free=3, queued=0)
    reference = Codec(m.PROTOCOL, m.MESSAGES, m.RECORDS, m.Batch, generate=False)
    codecs = {"generated": m.CODEC, "reference": reference}
    frames = {"call": m.encode(call), "result": m.encode(result)}
    for codec in codecs.values():  # both paths agree (and are warm) before anything is timed
        for msg in (call, result):
            frame = codec.encode(msg)
            assert frame == frames[msg.TAG] and codec.decode(frame) == msg
        codec.new(m.Call, call_id="c", function="f", payload=b"p")

    def cases(codec: Codec) -> dict:
        return {
            "encode_call": lambda: codec.encode(call),
            "decode_call": lambda: codec.decode(frames["call"]),
            "encode_result": lambda: codec.encode(result),
            "decode_result": lambda: codec.decode(frames["result"]),
            "new_call": lambda: codec.new(m.Call, call_id="c-1", function="mod:fn", payload=b"p",
                                          avoid=[], inputs=[], owner="o", needs=None),
        }

    figures: dict[str, dict[str, float]] = {name: {} for name in codecs}
    for name, codec in codecs.items():
        for case, fn in cases(codec).items():
            figures[name][case] = per_call_us(fn, number, repeat)
    bodies = {tag: cbor2.loads(frame) for tag, frame in frames.items()}
    cbor = {f"dumps_{tag}": per_call_us(lambda b=body: cbor2.dumps(b), number, repeat)
            for tag, body in bodies.items()}
    cbor |= {f"loads_{tag}": per_call_us(lambda f=frame: cbor2.loads(f), number, repeat)
             for tag, frame in frames.items()}

    print(f"{'us per call':<16}{'generated':>10}{'reference':>10}{'speed-up':>10}")
    for case in figures["generated"]:
        gen, ref = figures["generated"][case], figures["reference"][case]
        print(f"{case:<16}{gen:>10.2f}{ref:>10.2f}{ref / gen:>9.2f}x")
    print("cbor2 alone: " + ", ".join(f"{k} {v:.2f}" for k, v in cbor.items()))
    print(json.dumps({"scenario": "codec_micro", "quick": args.quick, "unit": "us_per_call",
                      "number": number, "repeat": repeat, **figures, "cbor2": cbor,
                      "frame_bytes": {tag: len(f) for tag, f in frames.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
