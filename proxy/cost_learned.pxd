# C types for proxy/cost_learned.py when it is compiled (setup.py); the .py stays the pure-Python twin.

cdef class LearnedCosts:
    cdef public Py_ssize_t max_entries
    cdef public double alpha
    cdef public double max_rise
    cdef public double queue_wait_ms
    cdef public object _entries
    cdef public object _shapes

    cpdef get(self, str tenant, fingerprint)
    cpdef observe(self, str tenant, fingerprint, observed)
    cpdef _learn(self, str tenant, fingerprint, double service)
    cpdef _lower(self, str tenant, fingerprint, double bound)
    cpdef merge(self, str tenant, fingerprint, double observed, count)
    cpdef _fold(self, table, key, double observed, count)
    cpdef shape(self, fingerprint)
