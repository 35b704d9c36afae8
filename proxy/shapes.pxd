# C types for proxy/shapes.py when it is compiled (setup.py); the .py stays the pure-Python twin.

cdef class _Slot:
    cdef public object index
    cdef public dict shapes
    cdef public list other


cdef class _Tenant:
    cdef public list slots
    cdef public _Slot current
    cdef public dict examples
    cdef public bint dirty


cdef class ShapeBook:
    cdef public double window_s
    cdef public double slot_s
    cdef public Py_ssize_t top
    cdef public dict _tenants

    cpdef record(self, tenant, fingerprint, double now, double estimated, double charged, observed, bint throttled,
                 method, target, call, body)
    cpdef _Slot _rotate(self, _Tenant book, index)
