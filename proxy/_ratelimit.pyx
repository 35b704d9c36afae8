# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The hot arithmetic of Sluicegate: a table of token buckets with debt, retry-after and bounded memory.

One slot per bucket key ("tenant:resource"), held in one malloc'd C array of typed structs, found
through an open-addressing index of int32 slot numbers: the only Python object per bucket is its
key (no dict entry, no boxed slot number), so 100k buckets stay well under 20 MB. No I/O and no
clock: every call takes `now` in seconds (monotonic, as a float) so the caller owns time and tests
never sleep.

Levels are lazy: a slot stores `tokens` at time `last`; the level at `now` is
`min(burst, tokens + (now - last) * rate)`, with elapsed time taken as 0 if `now` is earlier than
`last`. `proxy/_ratelimit_py.py` is the pure-Python twin the tests hold this against; keep the
arithmetic of both in the same order.
"""
cimport cython
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport int32_t
from libc.stdlib cimport free, malloc, realloc

# Module-level rebinding so the hot path returns shared objects instead of boxing a new float.
cdef object _ZERO = 0.0
cdef object _INF = float("inf")
cdef Py_ssize_t _FIRST_CAPACITY = 64
cdef Py_ssize_t _MAX_KEYS = 2**30  # slot numbers are int32 in the index
# index cells: a slot number, or one of these
cdef int32_t _EMPTY = -1
cdef int32_t _DELETED = -2  # a removed key: lookups probe past it, inserts may reuse it


cdef struct Slot:
    double rate     # cost units per second
    double burst    # cost units: the bucket's size
    double tokens   # cost units at `last`; negative is debt
    double last     # seconds (monotonic) of the last write
    double floor    # cost units: -max_debt, the deepest the level may go
    Py_hash_t hash  # of key, so probes compare hashes before strings
    PyObject* key   # owned reference to the str key; NULL while the slot is free


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
    cdef Py_ssize_t _count        # live keys
    cdef int32_t* _index          # open addressing, CPython's probe sequence; size is a power of two
    cdef Py_ssize_t _index_size
    cdef Py_ssize_t _index_filled  # cells not _EMPTY (live + _DELETED): what bounds probe lengths
    cdef readonly Py_ssize_t max_keys
    cdef readonly double last_level

    def __cinit__(self, Py_ssize_t max_keys=1_000_000):
        if max_keys < 1 or max_keys > _MAX_KEYS:
            raise ValueError(f"max_keys must be between 1 and {_MAX_KEYS}, got {max_keys}")
        self.max_keys = max_keys
        self._slots = NULL
        self._free = NULL
        self._index = NULL
        self._free_count = self._used = self._capacity = self._count = 0
        self._index_size = self._index_filled = 0
        self.last_level = 0.0
        self._rebuild_index(8)

    def __dealloc__(self):
        cdef Py_ssize_t slot
        if self._slots is not NULL:
            for slot in range(self._used):
                if self._slots[slot].key is not NULL:
                    Py_DECREF(<object>self._slots[slot].key)
        free(self._slots)
        free(self._free)
        free(self._index)

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
        cdef Py_hash_t h = hash(key)
        cdef Py_ssize_t cell = self._probe(key, h)
        if cell >= 0:
            s = &self._slots[self._index[cell]]
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
        if self._count >= self.max_keys:
            self._evict_idle(now)
            if self._count >= self.max_keys:
                raise TableFull(f"all {self.max_keys} buckets are in use and none is full; cannot add {key!r}")
        # Keep at most 2/3 of the index non-empty so probes stay short; rebuilding drops tombstones.
        if (self._index_filled + 1) * 3 > self._index_size * 2:
            self._rebuild_index((self._count + 1) * 2)
        cdef Py_ssize_t slot = self._take_slot()
        s = &self._slots[slot]
        s.rate = rate
        s.burst = burst
        s.tokens = burst
        s.last = now
        s.floor = floor
        s.hash = h
        Py_INCREF(key)
        s.key = <PyObject*>key
        self._count += 1
        self._insert(slot, h)
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
        cdef Py_ssize_t cell = self._probe(key, hash(key))
        if cell < 0:
            raise KeyError(key)
        self._release(cell)

    def keys(self):
        """Every key in the table, for admin listings."""
        cdef Py_ssize_t slot
        cdef list keys = []
        for slot in range(self._used):
            if self._slots[slot].key is not NULL:
                keys.append(<object>self._slots[slot].key)
        return keys

    def __len__(self):
        return self._count

    def __contains__(self, key):
        return isinstance(key, str) and self._probe(key, hash(key)) >= 0

    ### Internals ###

    cdef inline Py_ssize_t _probe(self, str key, Py_hash_t h) noexcept:
        """The index cell holding `key`, or -1."""
        cdef size_t mask = <size_t>self._index_size - 1
        cdef size_t perturb = <size_t>h
        cdef size_t i = <size_t>h & mask
        cdef int32_t found
        cdef Slot* s
        while True:
            found = self._index[i]
            if found == _EMPTY:
                return -1
            if found >= 0:
                s = &self._slots[found]
                # the proxy passes the same key object every time: identity settles most probes
                if s.key == <PyObject*>key or (s.hash == h and <str>s.key == key):
                    return <Py_ssize_t>i
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask

    cdef inline Slot* _find(self, str key) except NULL:
        cdef Py_ssize_t cell = self._probe(key, hash(key))
        if cell < 0:
            raise KeyError(key)
        return &self._slots[self._index[cell]]

    cdef void _insert(self, Py_ssize_t slot, Py_hash_t h) noexcept:
        """Point a free index cell at `slot`, whose key is known to be absent; the caller made room."""
        cdef size_t mask = <size_t>self._index_size - 1
        cdef size_t perturb = <size_t>h
        cdef size_t i = <size_t>h & mask
        while self._index[i] >= 0:
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask
        if self._index[i] == _EMPTY:
            self._index_filled += 1
        self._index[i] = <int32_t>slot

    cdef int _rebuild_index(self, Py_ssize_t at_least) except -1:
        cdef Py_ssize_t size = 8
        while size <= at_least:
            size *= 2
        cdef int32_t* index = <int32_t*>malloc(size * sizeof(int32_t))
        if index is NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(size):
            index[i] = _EMPTY
        free(self._index)
        self._index = index
        self._index_size = size
        self._index_filled = 0
        cdef Py_ssize_t slot
        for slot in range(self._used):
            if self._slots[slot].key is not NULL:
                self._insert(slot, self._slots[slot].hash)
        return 0

    cdef void _release(self, Py_ssize_t cell) noexcept:
        cdef Py_ssize_t slot = self._index[cell]
        cdef Slot* s = &self._slots[slot]
        self._index[cell] = _DELETED
        Py_DECREF(<object>s.key)
        s.key = NULL
        self._count -= 1
        self._free[self._free_count] = slot
        self._free_count += 1

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

    cdef int _evict_idle(self, double now) except -1:
        # A full bucket is indistinguishable from a fresh one, so dropping it loses nothing.
        cdef Py_ssize_t cell
        cdef int32_t slot
        cdef Slot* s
        for cell in range(self._index_size):
            slot = self._index[cell]
            if slot >= 0:
                s = &self._slots[slot]
                if _level(s, now) >= s.burst:
                    self._release(cell)
        return 0
