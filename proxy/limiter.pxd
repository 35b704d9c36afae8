# C types for proxy/limiter.py when it is compiled (setup.py); the .py stays the pure-Python twin.

cdef class Decision:
    cdef public bint admitted
    cdef public double wait
    cdef public double remaining
    cdef public double limit
    cdef public double window
    cdef public object reason
    cdef public double charged

    cpdef tuple _fields(self)


cdef class _Budget:
    cdef public str key
    cdef public double rate
    cdef public double burst
    cdef public double max_debt
    cdef public double max_wait
    cdef public double window


cdef class LocalLimiter:
    cdef public double share
    cdef public object _clock
    cdef public object _table
    cdef public dict _budgets

    cpdef try_acquire(self, str tenant, str resource, double cost, bint shadow=*)
    cpdef settle(self, str tenant, str resource, double charged, double observed)
    cpdef _apply(self, str tenant, str resource, double amount, bint debit)
    cpdef _restore(self, _Budget budget, double now)
