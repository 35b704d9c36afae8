"""Typed API of the compiled token-bucket table (`proxy/_ratelimit.pyx`).

Units: rate in cost units per second; burst, cost, levels and debt in cost units; `now` in seconds
from a monotonic clock, passed in by the caller (the table has no clock and does no I/O).
"""

class TableFull(Exception):
    """`configure` needed a new slot, the table already holds `max_keys` keys and none is idle."""

class TokenBucketTable:
    """Token buckets keyed by str ("tenant:resource"), bounded to `max_keys` keys.

    The level of a bucket at `now` is `min(burst, tokens + (now - last) * rate)`, computed lazily;
    a `now` earlier than the last write counts as no elapsed time.
    """

    max_keys: int
    #: the level (cost units) seen or left by the most recent configure/try_acquire/force_charge/
    #: credit/level call, so a caller gets "remaining" without a second lookup
    last_level: float

    def __init__(self, max_keys: int = 1_000_000) -> None:
        """An empty table that holds at most `max_keys` keys (ValueError outside 1 .. 2**30)."""

    def configure(self, key: str, rate: float, burst: float, now: float, max_debt: float = -1.0) -> None:
        """Set a bucket's rate (cost units/s), burst and max debt (cost units; < 0 means "= burst").

        A new key starts full (level = burst). An existing key is first refilled at its OLD rate up
        to `now`, then its level is clamped to the new burst and to the new floor (-max_debt): a
        reconfigure never adds tokens; it only forgives debt deeper than the new max debt.
        ValueError unless rate > 0 and burst > 0. When a new key meets a full table, every idle key
        (level >= burst at `now`) is evicted first; if none is idle, TableFull.
        """

    def try_acquire(self, key: str, cost: float, now: float) -> float:
        """0.0 and `cost` charged when the level at `now` is >= cost.

        Otherwise nothing changes and the result is the seconds until `cost` units will be there,
        `(cost - level) / rate`, or `math.inf` when cost > burst (never admissible).
        ValueError for cost < 0, KeyError for an unknown (or evicted) key.
        """

    def force_charge(self, key: str, cost: float, now: float) -> float:
        """Charge `cost` (>= 0) even into debt, but never below -max_debt. Returns the new level."""

    def credit(self, key: str, amount: float, now: float) -> float:
        """Add `amount` (>= 0) cost units, capped at the burst. Returns the new level."""

    def level(self, key: str, now: float) -> float:
        """The level at `now` in cost units (negative while in debt). Changes nothing."""

    def remove(self, key: str) -> None:
        """Forget `key` and free its slot for reuse. KeyError for an unknown key."""

    def keys(self) -> list[str]:
        """Every key in the table, for admin listings."""

    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
