"""Failure-detection timings of the membership core (``--profile default|fast``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Failure-detection timings, in seconds (see ``profile``)."""

    period: float = 0.4  # protocol period: one probe per period
    ack_timeout: float = 0.16  # direct probe, before asking for indirect probes
    indirect: int = 3  # helpers asked per failed direct probe
    suspicion_alpha: float = 2.0  # min suspicion = alpha * max(1, log10 n) * period
    suspicion_beta: float = 3.0  # max suspicion = beta * min
    expected_confirmations: int = 3
    retransmit_mult: int = 4  # memberlist's LAN default
    gossip_fanout: int = 8  # digests per message
    seed_retry: float = 1.0  # slow pings: dead members, and the first wait on a silent address
    dial_backoff_max: float = 30.0  # longest wait between two pings of a silent address
    dial_attempts: int = 6  # pings of an address no member answered on before it is forgotten
    forget_after: float = 120.0
    starved_after: float = 1.0  # a tick later than this means our loop was starved

    @classmethod
    def profile(cls, name: str) -> Timing:
        """``default`` (LAN/Wi-Fi) or ``fast`` (wired/lab). Raises ValueError otherwise."""
        if name == "default":
            return cls()
        if name == "fast":
            return cls(period=0.1, ack_timeout=0.04, seed_retry=0.3, starved_after=0.3)
        raise ValueError(f"unknown timing profile {name!r} (expected default or fast)")
