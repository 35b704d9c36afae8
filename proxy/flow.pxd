# C types for proxy/flow.py when it is compiled (setup.py); the .py stays the pure-Python twin.

from proxy.admission cimport Admission, Ticket
from proxy.cost_learned cimport LearnedCosts
from proxy.esapi cimport parse_call
from proxy.limiter cimport Decision
from proxy.listener cimport Request
from proxy.metrics cimport Metrics
from proxy.opaque cimport echoed_field, forwarded_field, new_request_id
from proxy.shapes cimport ShapeBook
from proxy.upstream cimport Upstream, hedge_after
from proxy.upstream_http cimport UpstreamResponse

cpdef object _observe(head, encoding, int status)


cdef class Snapshot:
    cdef public object config
    cdef public object generation
    cdef public object digest
    cdef public object directory
    cdef public object cost_model
    cdef public object ids
    cdef public object granted_bodies
    cdef readonly object _estimates
    cdef object _sizes
    cdef public object limits
    cdef public Py_ssize_t max_body_bytes
    cdef public bint learn

    cpdef granted_body(self, tuple sent)
    cpdef estimate(self, method, target, content_type, call, body, sizes)


cdef class HeldBodies:
    cdef public Py_ssize_t total
    cdef public dict by_tenant


cdef class Trace:
    cdef public double started
    cdef public object tenant
    cdef public object call
    cdef public double estimated
    cdef public double charged
    cdef public object observed
    cdef public object fingerprint
    cdef public str decision
    cdef public str reason
    cdef public int status
    cdef public str node
    cdef public double queued_s
    cdef public double upstream_s
    cdef public Py_ssize_t bytes_in
    cdef public Py_ssize_t bytes_out
    cdef public object body
    cdef public bytes request_id
    cdef public object task
    cdef public double sent_at
    cdef public str sent_to
    cdef public double deadline
    cdef public double limit_s
    cdef public str limit_reason
    cdef public str killed


cdef class Proxy:
    cdef public Snapshot snapshot
    cdef public object limiter
    cdef public LearnedCosts learned
    cdef public Admission admission
    cdef public Upstream upstream
    cdef public Metrics metrics
    cdef public object access_log
    cdef public ShapeBook shapes
    cdef public object index_sizes
    cdef public object runaway
    cdef dict _running
    cdef public Py_ssize_t inflight
    cdef public bint draining
    cdef object _idle
    cdef object _cost_fields
    cdef public dict client_buffers
    cdef public HeldBodies held_bodies
    cdef public object inflate_lanes

    cpdef _respond(self, Request request, UpstreamResponse upstream, data, bytes fields, Trace trace, rebound)
    cpdef _settle(self, tenant, call, decision, fingerprint, Trace trace)
    cpdef _in_flight(self, tenant, call, Trace trace, task)
    cpdef _record(self, Request request, Trace trace)
    cpdef bytes _cost_field(self, double estimated, double charged)
