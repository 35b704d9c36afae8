# C types for proxy/upstream.py when it is compiled (setup.py); the .py stays the pure-Python twin.

from proxy.upstream_http cimport ConnectionPool, NodeConnection, UpstreamResponse


cpdef double hedge_after(double cost, double threads_per_request)


cdef class Node:
    cdef public str url
    cdef public bytes host_header
    cdef public object pool
    cdef public double down_until
    cdef public Py_ssize_t failures
    cdef public bint healthy

    cpdef bint usable(self, double now)


cdef class Upstream:
    cdef public object config
    cdef double _timeout
    cdef public object on_error
    cdef public list nodes
    cdef public object _ssl
    cdef public object _auth
    cdef public bint _auth_refused
    cdef public bint _poll_forbidden
    cdef public bytes _auth_field
    cdef dict _tails
    cdef public Py_ssize_t _next
    cdef public object _health_task
    cdef public object _hedge_task
    cdef public Py_ssize_t hedged

    cpdef bytes forward_fields(self, bytes passed, forwarded_for, client_ip, scheme)
    cpdef bytes _tail(self, forwarded_for, client_ip, scheme)
    cpdef _pick(self)
    cpdef _mark_down(self, Node node, exc)
