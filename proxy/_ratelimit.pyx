# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot arithmetic of Sluicegate: a table of token buckets with debt, retry-after and bounded memory.

One slot per bucket key ("tenant:resource"), held in one malloc'd C array of typed structs; the only
Python objects per slot are the key and its index entry. No I/O and no clock: every call takes `now`
in seconds (monotonic, as a float) so the caller owns time and tests never sleep.

Levels are lazy: a slot stores `tokens` at time `last`; the level at `now` is
`min(burst, tokens + (now - last) * rate)`, with elapsed time taken as 0 if `now` is earlier than
`last`. `proxy/_ratelimit_py.py` is the pure-Python twin the tests hold this against; keep the
arithmetic of both in the same order.
"""
cimport cython
from cpython.dict cimport PyDict_GetItemWithError
from cpython.long cimport PyLong_AsSsize_t
from cpython.ref cimport PyObject
from libc.stdlib cimport free, malloc, realloc

# Module-level rebinding so the hot path returns shared objects instead of boxing a new float.
cdef object _ZERO = 0.0
cdef object _INF = float("inf")
cdef Py_ssize_t _FIRST_CAPACITY = 64


cdef struct Slot:
    double rate     # cost units per second
    double burst    # cost units: the bucket's size
    double tokens   # cost units at `last`; negative is debt
    double last     # seconds (monotonic) of the last write
    double floor    # cost units: -max_debt, the deepest the level may go


cdef inline double _level(const Slot* s, double now) noexcept nogil:
    """Level at `now`; time running backwards counts as no time at all."""
    cdef double elapsed = now - s.last
    cdef double level = s.tokens
    if elapsed > 0:
        level = level + elapsed * s.rate
    if level > s.burst:
        level = s.burst
    return level


cdef inline void _store(Slot* s, double level, double now) noexcept nogil:
    s.tokens = level
    if now > s.last:  # never move a slot's clock backwards
        s.last = now


### Public API ###

class TableFull(Exception):
    """`configure` needed a new slot, the table already holds `max_keys` keys and none is idle."""


@cython.final
cdef class TokenBucketTable:
    """Token buckets keyed by str: rate in cost units per second, burst and levels in cost units.

    Memory is bounded by `max_keys`. When a new key would exceed it, every idle key (a full bucket,
    indistinguishable from a fresh one) is evicted; callers re-`configure` a key they get KeyError for.
    """

    cdef Slot* _slots
    cdef Py_ssize_t* _free        # stack of slot numbers released by remove/evict
    cdef Py_ssize_t _free_count
    cdef Py_ssize_t _used         # slots ever handed out: [0, _used) are live or on the free stack
    cdef Py_ssize_t _capacity
    cdef readonly Py_ssize_t max_keys
    cdef dict _index              # key -> slot number
    cdef readonly double last_level

    def __cinit__(self, Py_ssize_t max_keys=1_000_000):
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.max_keys = max_keys
        self._index = {}
        self._slots = NULL
        self._free = NULL
        self._free_count = 0
        self._used = 0
        self._capacity = 0
        self.last_level = 0.0

    def __dealloc__(self):
        free(self._slots)
        free(self._free)

    def configure(self, str key not None, double rate, double burst, double now, double max_debt=-1.0):
        """Set a bucket's rate (cost units/s), burst and max debt (cost units; < 0 means "= burst").

        A new key starts full. An existing key is first refilled at its old rate up to `now`, then
        its level is clamped to the new burst and the new floor (-max_debt): a reconfigure never adds
        tokens, and only forgives debt deeper than the new max debt. Raises TableFull when the table
        holds `max_keys` keys and none of them is idle.
        """
        if not rate > 0:
            raise ValueError(f"rate must be > 0 cost units per second, got {rate!r}")
        if not burst > 0:
            raise ValueError(f"burst must be > 0 cost units, got {burst!r}")
        if not max_debt >= 0:
            max_debt = burst
        cdef double floor = -max_debt
        cdef double level
        cdef Slot* s
        cdef PyObject* found = PyDict_GetItemWithError(self._index, key)
        if found is not NULL:
            s = &self._slots[PyLong_AsSsize_t(<object>found)]
            level = _level(s, now)  # refill at the old rate before the new one applies
            if level > burst:
                level = burst
            if level < floor:
                level = floor
            s.rate = rate
            s.burst = burst
            s.floor = floor
            _store(s, level, now)
            self.last_level = level
            return
        if len(self._index) >= self.max_keys:
            self._evict_idle(now)
            if len(self._index) >= self.max_keys:
                raise TableFull(f"all {self.max_keys} buckets are in use and none is full; cannot add {key!r}")
        cdef Py_ssize_t slot = self._take_slot()
        s = &self._slots[slot]
        s.rate = rate
        s.burst = burst
        s.tokens = burst
        s.last = now
        s.floor = floor
        self._index[key] = slot
        self.last_level = burst

    def try_acquire(self, str key not None, double cost, double now):
        """Charge `cost` units if the bucket holds them and return 0.0.

        Otherwise change nothing and return the seconds until `cost` units will be there
        (`math.inf` if `cost` exceeds the burst). KeyError for an unknown key.
        """
        if not cost >= 0:
            raise ValueError(f"cost must be >= 0 cost units, got {cost!r}")
        cdef Slot* s = self._find(key)
        cdef double level = _level(s, now)
        if level >= cost:
            level = level - cost
            _store(s, level, now)
            self.last_level = level
            return _ZERO
        self.last_level = level
        if cost > s.burst:
            return _INF
        return (cost - level) / s.rate

    def force_charge(self, str key not None, double cost, double now):
        """Charge `cost` units even into debt, never below -max_debt. Returns the new level (cost units)."""
        if not cost >= 0:
            raise ValueError(f"cost must be >= 0 cost units, got {cost!r}")
        cdef Slot* s = self._find(key)
        cdef double level = _level(s, now) - cost
        if level < s.floor:
            level = s.floor
        _store(s, level, now)
        self.last_level = level
        return level

    def credit(self, str key not None, double amount, double now):
        """Give `amount` units back, capped at the burst. Returns the new level (cost units)."""
        if not amount >= 0:
            raise ValueError(f"amount must be >= 0 cost units, got {amount!r}")
        cdef Slot* s = self._find(key)
        cdef double level = _level(s, now) + amount
        if level > s.burst:
            level = s.burst
        _store(s, level, now)
        self.last_level = level
        return level

    def level(self, str key not None, double now):
        """The bucket's level at `now` in cost units (negative while in debt). Changes nothing."""
        cdef double level = _level(self._find(key), now)
        self.last_level = level
        return level

    def remove(self, str key not None):
        """Forget a key and free its slot. KeyError for an unknown key."""
        cdef Py_ssize_t slot = self._index.pop(key)
        self._free[self._free_count] = slot
        self._free_count += 1

    def keys(self):
        """Every key in the table, for admin listings."""
        return list(self._index)

    def __len__(self):
        return len(self._index)

    def __contains__(self, key):
        return key in self._index

    ### Internals ###

    cdef inline Slot* _find(self, str key) except NULL:
        cdef PyObject* found = PyDict_GetItemWithError(self._index, key)
        if found is NULL:
            raise KeyError(key)
        return &self._slots[PyLong_AsSsize_t(<object>found)]

    cdef Py_ssize_t _take_slot(self) except -1:
        if self._free_count:
            self._free_count -= 1
            return self._free[self._free_count]
        if self._used == self._capacity:
            self._grow()
        self._used += 1
        return self._used - 1

    cdef int _grow(self) except -1:
        # Doubling keeps inserts amortised O(1); max_keys caps it so memory stays bounded.
        cdef Py_ssize_t capacity = self._capacity * 2 if self._capacity else _FIRST_CAPACITY
        if capacity > self.max_keys:
            capacity = self.max_keys
        cdef Slot* slots = <Slot*>realloc(self._slots, capacity * sizeof(Slot))
        if slots is NULL:
            raise MemoryError()
        self._slots = slots
        cdef Py_ssize_t* free_stack = <Py_ssize_t*>realloc(self._free, capacity * sizeof(Py_ssize_t))
        if free_stack is NULL:
            raise MemoryError()
        self._free = free_stack
        self._capacity = capacity
        return 0

    cdef void _evict_idle(self, double now) except *:
        # A full bucket is indistinguishable from a fresh one, so dropping it loses nothing.
        cdef Slot* s
        cdef list idle = []
        for key, slot in self._index.items():
            s = &self._slots[<Py_ssize_t>slot]
            if _level(s, now) >= s.burst:
                idle.append(key)
        for key in idle:
            self.remove(key)
