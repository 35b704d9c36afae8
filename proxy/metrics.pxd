# C types for proxy/metrics.py when it is compiled (setup.py); the .py stays the pure-Python twin.

cdef class _Histogram:
    cdef public list counts
    cdef public double total
    cdef public Py_ssize_t count

    cpdef observe(self, double value)


cdef class _Tally:
    cdef public Py_ssize_t requests
    cdef public Py_ssize_t costed
    cdef public double estimated
    cdef public double charged
    cdef public Py_ssize_t answered
    cdef public double observed


cdef class Metrics:
    cdef public object registry
    cdef public object hot
    cdef dict _requests
    cdef dict _responses
    cdef dict _estimated
    cdef dict _charged
    cdef dict _observed
    cdef dict _queue_wait
    cdef dict _upstream
    cdef dict _tallies
    cdef public object upstream_errors
    cdef public object config_reloads
    cdef public object config_reload_failures
    cdef public object config_generation
    cdef public object config_info
    cdef public object redis_up
    cdef public object redis_fallbacks
    cdef public object live
    cdef public object cancelled
    cdef public object degraded

    cpdef count(self, tenant, resource, decision, reason, status, double estimated, double charged, observed)
    cpdef fold(self)
    cpdef count_request(self, tenant, resource, decision, reason)
    cpdef count_response(self, tenant, status)
    cpdef count_cost(self, tenant, resource, double estimated, double charged, observed)
    cpdef observe_queue_wait(self, tenant, double seconds)
    cpdef observe_upstream(self, resource, double seconds)
