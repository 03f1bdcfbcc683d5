"""DNS stand-ins for the SSRF tests: the guard takes its resolver as a parameter, so a test can play a
DNS server whose answers change, while the download or delivery under test is the real one."""

from __future__ import annotations

#: Other spellings of 127.0.0.1 that inet_aton (and so the C resolver) reads: decimal, octal, hex, short.
LOOPBACK_SPELLINGS = ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "0x7f000001", "017700000001"]


class RebindingDns:
    """A DNS server for one name whose answer changes between lookups: it answers the n-th lookup with
    the n-th address (the last one repeats), and records every lookup."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return [self.answers[min(len(self.lookups), len(self.answers)) - 1]]
